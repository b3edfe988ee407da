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


# ---- errors, reruns, failed runs, tracking (issue 10 §1-2, issue 11) ------------------------------------------
TINY = (
    "name: tiny\n"
    "data: {name: synthetic, params: {n: 600, task_type: binary, dim: 6}}\n"
    "model_defaults: {numeric_mode: dense, tower_hidden: [4]}\n"
    "models: [{name: mmoe, params: {num_experts: 2, expert_hidden: [4]}}, {name: shared_bottom}]\n"
    "train: {epochs: 1, batch_size: 128}\n"
)


def _main(capsys, *argv) -> tuple[int, str, str]:
    """``mtlrec.cli.main`` run in-process: (exit status, stdout, stderr)."""
    import pytest

    from mtlrec.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def _tiny(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY + f"out_dir: {tmp_path / 'runs'}\n" + extra)
    return cfg


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    cfg = _tiny(tmp_path)
    code, _, err = _main(capsys, "train", cfg, "--set", "train.epoch=1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'train.epoch'" in err and "did you mean 'train.epochs'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("name: mmoe", "name: mmoee"))
    code, _, err = _main(capsys, "train", bad)
    assert code == 2 and "models[0].name" in err and "did you mean 'mmoe'" in err and err.count("\n") == 1
    code, _, err = _main(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in err and "not found" in err
    schema = tmp_path / "schema.yaml"
    schema.write_text("features: [{name: a, kind: categorical}]\ntasks: [{name: y, type: binary}]\n")
    code, _, err = _main(capsys, "train", schema)
    assert code == 2 and "is a schema" in err and "data: {name: files, params: {schema:" in err
    code, _, err = _main(capsys, "train", cfg, "-m", "mmo")
    assert code == 2 and "--model: unknown model 'mmo' (did you mean 'mmoe'?)" in err
    code, _, err = _main(capsys, "--debug", "train", tmp_path / "missing.yaml")
    assert code == 2 and "Traceback" in err  # --debug: the traceback as well


def test_reruns_results_rows_epoch_lines_and_evaluate_errors(tmp_path, capsys):
    cfg, out = _tiny(tmp_path), tmp_path / "runs"
    code, stdout, _ = _main(capsys, "train", cfg, "--quiet")
    assert code == 0 and "mmoe seed 0 epoch 1/1: valid y1.auc " in stdout and f"written to {out}" in stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["best_epoch"] for r in rows] == [1, 1]  # 1-based
    code, _, err = _main(capsys, "train", cfg, "--quiet")  # a rerun refuses
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    code, _, _ = _main(capsys, "train", cfg, "--quiet", "--overwrite", "-m", "mmoe")
    assert code == 0
    code, stdout, _ = _main(capsys, "train", cfg, "--quiet", "--resume", "--set", "train.epochs=2", "-m", "mmoe")
    assert code == 0 and "mmoe seed 0 epoch 2/2:" in stdout and "mmoe seed 0 epoch 1/2:" not in stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["label"], r["seed"]) for r in rows) == [("mmoe", 0), ("shared_bottom", 0)]  # no duplicates
    info = json.loads((out / "mmoe" / "seed0" / "run.json").read_text())
    assert info["train"]["epochs"] == 2  # the changed setting is applied and recorded
    code, _, err = _main(capsys, "train", cfg, "--quiet", "--resume", "--set", "train.lr=0.5", "-m", "mmoe")
    assert code == 2 and "--resume refused" in err and "train.lr: 0.001 -> 0.5" in err
    code, _, err = _main(capsys, "evaluate", out / "mmoe" / "seed0", "--split", "validation")
    assert code == 2 and "did you mean 'valid'" in err and "test, train, valid" in err
    (out / "shared_bottom" / "seed0" / "run.json").write_text("{not json")
    code, _, err = _main(capsys, "evaluate", out / "shared_bottom" / "seed0")
    assert code == 2 and "run.json is damaged" in err


def test_a_failed_run_is_recorded_and_the_others_run(tmp_path, capsys, monkeypatch):
    from mtlrec.errors import NonFiniteLoss
    from mtlrec.train.trainer import Trainer

    fit = Trainer.fit

    def failing_fit(self, *a, **k):
        if self.model.registry_name == "mmoe":
            raise NonFiniteLoss("loss became nan at step 3; lower the lr")
        return fit(self, *a, **k)

    monkeypatch.setattr(Trainer, "fit", failing_fit)
    code, stdout, err = _main(capsys, "train", _tiny(tmp_path), "--quiet", "--seeds", "0,1")
    assert code == 1 and "2 of 4 runs failed (mmoe)" in err
    assert "| mmoe | failed |" in stdout and "| shared_bottom | 0." in stdout
    rows = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "failed", "ok", "ok"]
    assert "loss became nan" in rows[0]["error"]


def test_settings_no_run_can_use_end_the_experiment_with_exit_2(tmp_path, capsys, monkeypatch):
    from mtlrec.errors import SettingsError
    from mtlrec.train.trainer import Trainer

    def refuse(self, *a, **k):
        raise SettingsError("train.embedding_optimizer 'adam': no Adam here; set train.embedding_optimizer=adagrad")

    monkeypatch.setattr(Trainer, "fit", refuse)
    code, _, err = _main(capsys, "train", _tiny(tmp_path), "--quiet", "--seeds", "0,1")
    assert code == 2 and err.strip().splitlines() == [
        "error: train.embedding_optimizer 'adam': no Adam here; set train.embedding_optimizer=adagrad"
    ]
    assert not (tmp_path / "runs" / "results.jsonl").exists()  # no run recorded as failed: none could have run


def test_tracking_loggers_tensorboard_and_mlflow(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    cfg = _tiny(tmp_path, "")
    code, _, err = _main(
        capsys, "train", cfg, "--quiet", "-m", "mmoe", "--set", "train.loggers=[tensorboard, mlflow]", "--set",
        "train.epochs=2",
    )  # fmt: skip
    assert code == 0, err
    run = tmp_path / "runs" / "mmoe" / "seed0"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tiny")
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert mlrun.data.params["train.epochs"] == "2"
    history = client.get_metric_history(mlrun.info.run_id, "valid.y1.auc")
    assert [m.step for m in history] == [1, 2]
    assert len(client.get_metric_history(mlrun.info.run_id, "train_step_loss")) == 2 * 4  # 480 rows / 128
