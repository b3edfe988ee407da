"""``mtlrec init`` and the walk-through of docs/walkthrough.md on a generated CSV: raw file -> init -> train ->
evaluate -> predict -> explain -> export (ONNX, parity-checked) -> predict with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from mtlrec.config import validate_config
from mtlrec.data.infer import guess_schema
from mtlrec.experiment import load_config
from mtlrec.schema import Schema

from .conftest import make_table


def _raw_csv(path, n: int = 1200):
    table = make_table(n)
    rng = np.random.default_rng(1)
    table = table.append_column("session_id", pa.array(rng.integers(0, 10**6, n)))
    table = table.append_column("is_weekend", pa.array(rng.integers(0, 2, n)))
    pacsv.write_csv(table, path)
    return path


def test_guesses_per_column(tmp_path):
    guesses = {g.column: g for g in guess_schema(_raw_csv(tmp_path / "events.csv"))}
    assert guesses["click"].kind == "task" and guesses["purchase"].kind == "task"
    assert guesses["is_weekend"].kind == "categorical" and guesses["is_weekend"].candidate_task  # not label-like
    assert guesses["genres"].kind == "multi_valued" and guesses["genres"].options["separator"] == "|"
    assert guesses["price"].kind == "numeric" and guesses["price"].options["transform"] == "log"
    assert guesses["session_id"].kind == "categorical" and guesses["rating"].kind == "numeric"


def test_hashing_for_huge_id_columns(tmp_path, monkeypatch):
    import mtlrec.data.infer as infer

    monkeypatch.setattr(infer, "HASH_ABOVE", 500)
    guesses = {g.column: g for g in guess_schema(_raw_csv(tmp_path / "events.csv"))}
    assert guesses["session_id"].options["hash_buckets"] >= 1000


def _run(capsys, *argv):
    from mtlrec.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert (e.value.code or 0) == 0, err
    return out


def test_walkthrough_raw_file_to_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTLREC_CACHE", str(tmp_path / "cache"))
    _raw_csv(tmp_path / "events.csv")
    out = _run(capsys, "init", "events.csv", "--out", "my_experiment.yaml")
    assert "next: mtlrec train my_experiment.yaml" in out
    text = (tmp_path / "my_experiment.yaml").read_text()
    assert text.count("#") > 5  # commented for editing
    schema = Schema.load(tmp_path / "my_experiment.schema.yaml")
    assert schema.task_names == ["click", "purchase"]
    exp = validate_config(load_config(tmp_path / "my_experiment.yaml"), "my_experiment.yaml")
    assert exp.data.name == "files" and exp.out_dir == "runs/my_experiment"
    with pytest.raises(SystemExit) as e:  # init never overwrites without --force
        from mtlrec.cli import main

        main(["init", "events.csv", "--out", "my_experiment.yaml"])
    assert e.value.code == 2
    capsys.readouterr()

    out = _run(capsys, "train", "my_experiment.yaml", "--quiet", "--set", "train.epochs=1", "-m", "mmoe")
    assert "mmoe seed 0 epoch 1/1: valid click.auc" in out
    run = tmp_path / "runs" / "my_experiment" / "mmoe" / "seed0"
    scores = json.loads(_run(capsys, "evaluate", run, "--split", "valid"))["metrics"]
    assert set(scores) == {"click", "purchase"}
    _run(capsys, "predict", run, "--file", "events.csv", "--out", "scores.csv")
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == '"score_click","score_purchase"'
    out = _run(capsys, "explain", run, "--out", "explain")
    assert (tmp_path / "explain").is_dir()
    out = _run(capsys, "export", run, "--format", "onnx", "--out", "model_export/mmoe.onnx")
    assert "parity" in out and (tmp_path / "model_export" / "preprocess.json").exists()
    _run(capsys, "predict", run, "--file", "events.csv", "--engine", "onnx", "--keep", "user", "--out", "onnx.csv")
    assert (tmp_path / "onnx.csv").read_text().splitlines()[0] == '"user","score_click","score_purchase"'
