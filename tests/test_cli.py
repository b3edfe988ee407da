from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mtlrec.cli import app

runner = CliRunner()


def test_cli_end_to_end(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: tiny\n"
        "data: {name: synthetic, params: {n: 3000, task_type: binary, dim: 10}}\n"
        "model_defaults: {numeric_mode: dense, tower_hidden: [8]}\n"
        "models: [{name: mmoe, params: {num_experts: 2, expert_hidden: [8]}}, {name: shared_bottom}]\n"
        "train: {epochs: 2, batch_size: 256}\n"
        "seeds: [0]\n"
    )
    out = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.output
    assert "| mmoe |" in res.output and "| shared_bottom |" in res.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["epochs_run"] == 1
    run = out / "mmoe" / "seed0"
    res = runner.invoke(app, ["evaluate", str(run), "--split", "valid"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["metrics"]["y1"]["auc"] == rows[0]["valid"]["y1"]["auc"]
    res = runner.invoke(app, ["predict", str(run), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == '"score_y1","score_y2"'


def test_cli_lists_and_help():
    for cmd in (["models"], ["datasets"], ["--help"], ["train", "--help"], ["predict", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, res.output
    assert "mmoe" in runner.invoke(app, ["models"]).output
    assert "census_income" in runner.invoke(app, ["datasets"]).output


def _files_experiment(tmp_path: Path, train, rest: str) -> Path:
    """An experiment config on the ``files`` data set: ``train`` (a table of tests.conftest's tiny schema) written
    as Parquet beside the schema, and ``rest`` (models, train, ...) appended; returns the config's path."""
    import pyarrow.parquet as pq

    from .conftest import tiny_schema

    pq.write_table(train, tmp_path / "train.parquet")
    tiny_schema().save(tmp_path / "schema.yaml")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data: {{name: files, params: {{schema: {tmp_path / 'schema.yaml'}, train: {tmp_path / 'train.parquet'},"
        f" cache_dir: {tmp_path / 'cache'}}}}}\n" + rest
    )
    return cfg


def test_predict_on_new_unlabeled_file(tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from .conftest import make_table

    table = make_table(600)
    cfg = _files_experiment(
        tmp_path,
        table.slice(0, 500),
        "models: [{name: mmoe, params: {num_experts: 2, expert_hidden: [8], embedding_dim: 4}}]\n"
        "train: {epochs: 1, batch_size: 128}\n",
    )
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    unlabeled = table.slice(500).drop_columns(["click", "purchase", "rating"])
    pacsv.write_csv(unlabeled, tmp_path / "new.csv")
    out = tmp_path / "scores.parquet"
    res = runner.invoke(
        app,
        ["predict", str(tmp_path / "runs" / "mmoe" / "seed0"), "--file", str(tmp_path / "new.csv"), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    scores = pq.read_table(out)
    assert scores.num_rows == 100 and scores.column_names == ["score_click", "score_purchase"]


def test_plugins_sharing_baselines_and_weighting_from_a_config(tmp_path):
    """Issue-4 pieces through the CLI: the DML plug-in as a model parameter, DTN / SNR / MSSM / Cross-Stitch rows,
    and a weighting strategy set with --set (recorded in every run's run.json)."""
    from .conftest import make_table

    cfg = _files_experiment(
        tmp_path,
        make_table(800),
        "model_defaults: {embedding_dim: 4, tower_hidden: [8]}\n"
        "models:\n"
        "  - {name: mmoe, label: mmoe+dml, params: {num_experts: 2, expert_hidden: [8], dml: {variant: dml}}}\n"
        "  - {name: dtn, params: {fi_dim: 8, masknet_agg_dim: 8, masknet_block_dim: 8, masknet_hidden: [8]}}\n"
        "  - {name: snr_trans}\n"
        "  - {name: mssm}\n"
        "  - {name: cross_stitch, params: {column_hidden: [8]}}\n"
        "train: {epochs: 1, batch_size: 128}\n",
    )
    out = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.weighting=gradnorm"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["mmoe+dml", "dtn", "snr_trans", "mssm", "cross_stitch"]
    for r in rows:
        info = json.loads((out / r["label"] / "seed0" / "run.json").read_text())
        assert info["train"]["weighting"] == "gradnorm", r["label"]
    assert json.loads((out / "mmoe+dml" / "seed0" / "run.json").read_text())["params"]["dml"] == {"variant": "dml"}
