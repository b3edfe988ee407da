"""Batch scoring: streamed CSV/Parquet in, scores in input order beside --keep columns, both engines, drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mtlrec.cli import app
from mtlrec.errors import UserError
from mtlrec.export.scoring import _coerce_categorical, predict_file, predict_split
from tests.conftest import make_table, tiny_schema

SMALL = {"embedding_dim": 4, "tower_hidden": [8], "num_experts": 2, "expert_hidden": [8]}


def train_tiny_run(root: Path, model: str = "mmoe") -> Path:
    """Train one epoch of a tiny model on a files data set (CSV + schema); returns the run folder."""
    from mtlrec.experiment import run_experiment

    table = make_table(800, seed=1)
    table = table.append_column("row_id", pa.array([f"r{i}" for i in range(table.num_rows)]))
    train = root / "train.csv"
    pacsv.write_csv(table, train)
    cfg = {
        "name": "tiny",
        "data": {
            "name": "files",
            "params": {"schema": tiny_schema().to_dict(), "train": str(train), "cache_dir": str(root / "cache")},
        },
        "models": [{"name": model, "params": SMALL if model == "mmoe" else {"embedding_dim": 4}}],
        "train": {"epochs": 1, "batch_size": 128},
        "seeds": [0],
        "out_dir": str(root / "runs"),
    }
    run_experiment(cfg, progress=False)
    return root / "runs" / model / "seed0"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("pred"))


@pytest.fixture(scope="module")
def rows(run_dir):
    """300 raw rows to score, with an id column and no labels."""
    t = make_table(300, seed=9).drop_columns(["click", "purchase", "rating"])
    return t.append_column("row_id", pa.array([f"q{i}" for i in range(t.num_rows)]))


def reference_scores(run_dir: Path, table: pa.Table) -> dict[str, np.ndarray]:
    """Scores of the whole table encoded at once and scored by the trainer's predict (the old code path)."""
    from mtlrec.data.preprocess import Preprocessor
    from mtlrec.experiment import load_run
    from mtlrec.train.trainer import predict

    model, info = load_run(run_dir)
    data = Preprocessor.from_state_dict(info["preprocessor"]).transform(table, labels=False)
    return predict(model, data)


def test_predict_csv_keeps_ids_in_order(run_dir, rows, tmp_path):
    src = tmp_path / "rows.csv"
    pacsv.write_csv(rows, src)
    out = tmp_path / "scores.parquet"
    rep = predict_file(run_dir, src, out, keep=["row_id", "user"], batch_rows=64)
    got = pq.read_table(out)
    assert got.column_names == ["row_id", "user", "score_click", "score_purchase"]
    assert got.column("row_id").to_pylist() == rows.column("row_id").to_pylist()
    ref = reference_scores(run_dir, rows)
    for t in ("click", "purchase"):
        np.testing.assert_allclose(got.column(f"score_{t}").to_numpy(), ref[t], atol=1e-6, rtol=0)
    assert rep["rows"] == 300 and {d["field"] for d in rep["drift"]} == {"user", "item", "genres"}


def test_onnx_engine_matches_torch(run_dir, rows, tmp_path):
    src = tmp_path / "rows.parquet"
    pq.write_table(rows, src)
    predict_file(run_dir, src, tmp_path / "t.csv", keep=["row_id"], engine="torch")
    rep = predict_file(run_dir, src, tmp_path / "o.csv", keep=["row_id"], engine="onnx", batch_rows=100)
    assert rep["engine"] == "onnx" and (run_dir / "export" / "best.onnx").exists()
    a, b = pacsv.read_csv(tmp_path / "t.csv"), pacsv.read_csv(tmp_path / "o.csv")
    assert a.column("row_id").equals(b.column("row_id"))
    for c in ("score_click", "score_purchase"):
        assert np.abs(a.column(c).to_numpy() - b.column(c).to_numpy()).max() <= 1e-5


def test_output_format_checked_before_scoring(run_dir, rows, tmp_path, monkeypatch):
    import mtlrec.export.scoring as scoring

    monkeypatch.setattr(scoring, "make_engine", lambda *a, **k: pytest.fail("scored before checking --out"))
    with pytest.raises(UserError, match=r"must end in \.csv or \.parquet, not '\.json'"):
        predict_file(run_dir, tmp_path / "rows.csv", tmp_path / "scores.json")
    res = CliRunner().invoke(app, ["predict", str(run_dir), "--out", str(tmp_path / "s.xlsx")])
    assert "must end in .csv or .parquet" in str(res.exception or res.output)


def test_numeric_missing_in_every_row_is_filled(run_dir, rows, tmp_path):
    t = rows.set_column(rows.column_names.index("price"), "price", pa.nulls(rows.num_rows, pa.float64()))
    src = tmp_path / "rows.parquet"
    pq.write_table(t, src)
    predict_file(run_dir, src, tmp_path / "s.parquet", batch_rows=50)
    got = pq.read_table(tmp_path / "s.parquet")
    # reference: the same rows encoded in one table beside one row whose price is known (a training-like table)
    extra = rows.slice(0, 1)
    both = pa.concat_tables([t, extra.cast(t.schema)])
    ref = reference_scores(run_dir, both)
    np.testing.assert_allclose(got.column("score_click").to_numpy(), ref["click"][:-1], atol=1e-6, rtol=0)
    # and a file without the column at all is scored the same, with a warning
    pq.write_table(rows.drop_columns(["price"]), src)
    rep = predict_file(run_dir, src, tmp_path / "s2.parquet")
    assert any("'price' is absent" in w for w in rep["warnings"])
    again = pq.read_table(tmp_path / "s2.parquet").column("score_click").to_numpy()
    np.testing.assert_allclose(again, got.column("score_click").to_numpy(), atol=1e-6, rtol=0)


def test_type_change_is_cast_and_reported(run_dir, rows, tmp_path):
    # training read `user` as text "0".."49" and `item` as integers; score them as floats
    t = rows.set_column(0, "user", pc.cast(pc.cast(rows.column("user"), pa.int64()), pa.float64()))
    t = t.set_column(1, "item", pc.cast(rows.column("item"), pa.float64()))
    src = tmp_path / "rows.parquet"
    pq.write_table(t, src)
    rep = predict_file(run_dir, src, tmp_path / "s.parquet")
    ref = reference_scores(run_dir, rows)
    np.testing.assert_allclose(
        pq.read_table(tmp_path / "s.parquet").column("score_click").to_numpy(), ref["click"], atol=1e-6, rtol=0
    )
    assert any("'user'" in w and "floats at scoring, integers at training" in w for w in rep["warnings"])
    assert all(d["oov_share"] < 0.05 for d in rep["drift"] if d["field"] in ("user", "item"))


def test_zero_padded_codes():
    vt = {"value_type": "string", "zero_padded_width": 3}
    col, note = _coerce_categorical(pa.chunked_array([pa.array([21, 7, None])]), vt)
    assert col.to_pylist() == ["021", "007", None] and "zero-padded" in note
    col, note = _coerce_categorical(pa.chunked_array([pa.array(["21", "007"])]), vt)
    assert col.to_pylist() == ["021", "007"] and "padded" in note
    col, note = _coerce_categorical(pa.chunked_array([pa.array(["021", "21"])]), {"value_type": "integer"})
    assert col.to_pylist() == ["21", "21"] and "rewritten" in note


def test_oov_warning(run_dir, rows, tmp_path):
    t = rows.set_column(0, "user", pa.array([f"new{i}" for i in range(rows.num_rows)]))
    src = tmp_path / "rows.csv"
    pacsv.write_csv(t, src)
    res = CliRunner().invoke(
        app, ["predict", str(run_dir), "--file", str(src), "--out", str(tmp_path / "s.csv"), "--oov-warn", "0.5"]
    )
    assert res.exit_code == 0, res.output
    assert "user 100.0%" in res.output
    assert "warning: field user: 100.0% of 300 values out of vocabulary (above --oov-warn 50%)" in res.output


def test_errors(run_dir, rows, tmp_path):
    src = tmp_path / "rows.csv"
    pacsv.write_csv(rows.drop_columns(["item"]), src)
    with pytest.raises(UserError, match="missing categorical column 'item'"):
        predict_file(run_dir, src, tmp_path / "s.csv")
    with pytest.raises(UserError, match="--keep 'row_idd': no such column .*did you mean 'row_id'"):
        predict_file(run_dir, src, tmp_path / "s.csv", keep=["row_idd"])
    with pytest.raises(UserError, match="unknown split 'tset'.*did you mean 'test'.*train, valid"):
        predict_split(run_dir, "tset", tmp_path / "s.csv")


def test_predict_split_command(run_dir, tmp_path):
    out = tmp_path / "valid.parquet"
    res = CliRunner().invoke(app, ["predict", str(run_dir), "--split", "valid", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).column_names == ["score_click", "score_purchase"]


def test_predict_split_keeps_row_and_labels(run_dir, tmp_path):
    out = tmp_path / "test.csv"
    predict_split(run_dir, "test", out, keep=["row", "purchase"], engine="onnx")
    got = pacsv.read_csv(out)
    assert got.column_names == ["row", "purchase", "score_click", "score_purchase"]
    assert got.column("row").to_pylist() == list(range(got.num_rows))
    with pytest.raises(UserError, match="--keep 'rows' \\(did you mean 'row'\\?\\): with --split, keep one of row"):
        predict_split(run_dir, "test", out, keep=["rows"])


def test_reading_is_streamed_in_bounded_batches(rows, tmp_path):
    from mtlrec.export.scoring import iter_batches

    pq.write_table(rows, tmp_path / "r.parquet", row_group_size=100)
    pacsv.write_csv(rows, tmp_path / "r.csv")
    for path, fmt in ((tmp_path / "r.parquet", "parquet"), (tmp_path / "r.csv", "csv")):
        sizes = [t.num_rows for t in iter_batches(path, fmt, ["user", "row_id"], 64)]
        assert max(sizes) <= 64 and sum(sizes) == rows.num_rows
