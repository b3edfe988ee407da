"""Issue 11, the data cases: each bad input gives one line naming file, row (where known), column and what was
expected, or is handled safely in the documented way (docs/data.md, "Bad input")."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mtlrec.data.bundle import encode_tables
from mtlrec.data.preprocess import Preprocessor
from mtlrec.data.stream import load_stream
from mtlrec.errors import UserError
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, SchemaError, TaskSpec

from .conftest import make_table, tiny_schema


def _schema(*feats) -> Schema:
    return Schema(list(feats) or [CategoricalFeature("c")], [TaskSpec("y")])


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and isinstance(exc, UserError)
    return msg


def test_ids_beyond_int64_and_float_stay_distinct(tmp_path):
    rows = ["c,y"] + [f"{2**64 + k},{k % 2}" for k in range(40)] + [f"{2**70},1", f"{2**70 + 1},0"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    d = tmp_path / "d.csv"
    b = load_stream(_schema(), d, d, d, cache_dir=tmp_path / "c")  # the same file as valid and test: train is all
    vocab = b.preprocessor_state["vocabularies"]["c"]
    assert len(vocab) == 42 and str(2**70 + 1) in vocab  # read as text: no collapse through float64
    assert len(np.unique(np.asarray(b.train.cat[:, 0]))) == len(b.train)


def test_scoring_type_differs_from_training_type():
    s = _schema(CategoricalFeature("c"))
    strings = Preprocessor(s).fit(pa.table({"c": ["021", "5", "7"], "y": [0, 1, 0]}))
    enc = strings.transform(pa.table({"c": [21, 5, 7]}), labels=False)  # integers at scoring: cast to text
    assert enc.cat[:, 0].tolist() == [0, 2, 3] and enc.oov == {"c": 1}  # "21" is not "021": OOV, and reported
    ints = Preprocessor.from_state_dict(Preprocessor(s).fit(pa.table({"c": [21, 5, 7], "y": [0, 1, 0]})).state_dict())
    assert ints.vocab_types == {"c": "int"}
    enc = ints.transform(pa.table({"c": ["021", "5", " 7", "x"]}), labels=False)  # text at scoring: cast to int
    assert enc.cat[:, 0].tolist() == [1, 2, 3, 0] and enc.oov == {"c": 1}


def test_duplicated_header_names(tmp_path):
    (tmp_path / "d.csv").write_text("c,y,c\na,1,b\nb,0,c\n")
    with pytest.raises(SchemaError) as err:
        load_stream(_schema(), tmp_path / "d.csv", cache_dir=tmp_path / "c")
    msg = _one_line(err.value)
    assert "d.csv" in msg and "duplicated column names ['c']" in msg


def test_non_utf8_byte_names_file_row_column_and_encoding_option(tmp_path):
    lines = [b"c,y"] + [b"v%d,%d" % (i, i % 2) for i in range(30)] + [b"caf\xe9,1", b"ok,0"]
    (tmp_path / "d.csv").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SchemaError) as err:
        load_stream(_schema(), tmp_path / "d.csv", cache_dir=tmp_path / "c")
    msg = _one_line(err.value)
    assert "d.csv" in msg and "data row 31" in msg and "column 'c'" in msg and "encoding" in msg
    d = tmp_path / "d.csv"
    b = load_stream(_schema(), d, d, d, cache_dir=tmp_path / "c", read_options={"encoding": "latin-1"})
    assert "café" in b.preprocessor_state["vocabularies"]["c"]


@pytest.mark.parametrize("value, match", [("inf", "data row 3, column 'x'.*not finite"), ("-inf", "not finite")])
def test_infinite_numeric_values_are_refused(tmp_path, value, match):
    d = tmp_path / "d.csv"
    d.write_text(f"x,y\n1.0,0\n2.0,1\n{value},0\n3,1\n")
    with pytest.raises(SchemaError, match=match) as err:
        load_stream(_schema(NumericFeature("x")), d, d, d, cache_dir=tmp_path / "c")
    assert "d.csv" in _one_line(err.value)


def test_extreme_values_that_overflow_the_statistics_are_refused():
    t = pa.table({"x": [1.7e308, 1.7e308, 1.0], "y": [0, 1, 0]})
    with pytest.raises(SchemaError, match="column 'x'.*overflow.*transform: quantile") as err:
        Preprocessor(_schema(NumericFeature("x"))).fit(t, source="train.csv")
    assert "train.csv" in _one_line(err.value)
    pre = Preprocessor(_schema(NumericFeature("x", transform="quantile", n_buckets=2))).fit(t)  # the way out
    assert pre.transform(t).cat[:, 0].tolist() == [2, 2, 1]


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"features": [{"name": "x", "kind": "numeric", "transform": "log10"}], "tasks": [{"name": "y"}]},
         r"features\.x\.transform: unknown value 'log10' \(did you mean 'log'\?\); expected one of: standardize"),
        ({"features": [{"name": "g", "kind": "multi_valued", "pooling": "max"}], "tasks": [{"name": "y"}]},
         r"features\.g\.pooling: unknown value 'max'; expected one of: mean, sum"),
        ({"features": [{"name": "g", "kind": "multi_valued", "max_len": 0}], "tasks": [{"name": "y"}]},
         r"features\.g\.max_len: expected an integer >= 1"),
        ({"features": [{"name": "c", "hash_buckets": 0}], "tasks": [{"name": "y"}]},
         r"features\.c\.hash_buckets: expected an integer >= 1 or null"),
        ({"features": [{"name": "g", "kind": "multi_valued", "separator": ""}], "tasks": [{"name": "y"}]},
         r"features\.g\.separator: expected a non-empty string"),
        ({}, "an empty schema"),
        ({"features": [{"name": "c"}], "tasks": []}, "an empty schema"),
        ({"features": [{"name": "c"}], "tasks": [{"name": "y", "maks": "c"}]},
         r"tasks\.y: unknown key 'maks' \(did you mean 'mask'\?\)"),
        ({"features": [{"name": "c", "kind": "categorial"}], "tasks": [{"name": "y"}]},
         r"features\[0\]\.kind: unknown value 'categorial' \(did you mean 'categorical'\?\)"),
        ({"features": [{"name": "c"}], "tasks": [{"name": "y", "type": "multiclass"}]},
         r"tasks\.y\.type: unknown value 'multiclass'; expected one of: binary, regression"),
    ],
)  # fmt: skip
def test_schema_validation_one_line_with_key_path(tmp_path, raw, match):
    with pytest.raises(SchemaError, match=match) as err:
        Schema.from_dict(raw)
    _one_line(err.value)
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SchemaError, match="s.yaml: "):
        Schema.load(tmp_path / "s.yaml")


def test_mask_that_selects_no_rows_is_refused_before_training(tmp_path):
    t = make_table(300)
    t = t.set_column(t.column_names.index("click"), "click", pa.array(np.zeros(300, np.int64)))
    t = t.set_column(t.column_names.index("purchase"), "purchase", pa.array(np.zeros(300, np.int64)))
    with pytest.raises(SchemaError, match="task 'purchase': its mask column 'click' selects no training row") as err:
        encode_tables("x", tiny_schema(), {"train": t, "valid": t, "test": t}, {})
    _one_line(err.value)
    pq.write_table(t, tmp_path / "d.parquet")
    with pytest.raises(SchemaError, match="d.parquet: task 'purchase'.*selects no training row"):
        load_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c")


def test_numeric_missing_in_every_scoring_row_is_filled_as_training_does():
    pre = Preprocessor(tiny_schema()).fit(make_table(200))
    state = Preprocessor.from_state_dict(pre.state_dict())
    score = make_table(20, seed=1).drop_columns(["click", "purchase", "rating"])
    score = score.set_column(score.column_names.index("price"), "price", pa.nulls(20, pa.float64()))
    enc = state.transform(score, source="new.csv", labels=False)
    fill = pre.numeric_stats["price"]
    want = (np.log1p(fill["fill"] - fill["shift"]) - fill["mean"]) / fill["std"]
    assert np.allclose(enc.num[:, 0], want) and set(enc.oov) == {"user", "item", "genres"}


def test_prepare_reports_a_bad_schema_in_one_line(tmp_path):
    from mtlrec.cli import app

    pq.write_table(make_table(100), tmp_path / "train.parquet")
    (tmp_path / "schema.yaml").write_text(
        "features: [{name: price, kind: numeric, transform: log10}]\ntasks: [{name: click}]\n"
    )
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data: {{name: files, params: {{schema: {tmp_path / 'schema.yaml'}, train: {tmp_path / 'train.parquet'},"
        f" cache_dir: {tmp_path / 'cache'}}}}}\n"
    )
    res = CliRunner().invoke(app, ["prepare", str(cfg), "--quiet"])
    assert res.exit_code != 0
    assert isinstance(res.exception, SchemaError) and "features.price.transform" in str(res.exception)
