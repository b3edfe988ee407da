from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtlrec.data.preprocess import Preprocessor
from mtlrec.data.readers import read_table
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, SchemaError, TaskSpec

from .conftest import make_table, tiny_schema


def test_schema_roundtrip_yaml_json(tmp_path):
    s = tiny_schema(with_regression=True)
    for name in ("s.yaml", "s.json"):
        s.save(tmp_path / name)
        assert Schema.load(tmp_path / name).to_dict() == s.to_dict()


def test_vocab_fit_on_train_only_and_oov():
    train = pa.table({"c": ["a", "a", "b", "rare"], "y": [0, 1, 0, 1]})
    test = pa.table({"c": ["a", "unseen", "rare"], "y": [1, 0, 1]})
    pre = Preprocessor(Schema([CategoricalFeature("c", min_count=2)], [TaskSpec("y")])).fit(train)
    enc = pre.transform(test)
    assert enc.cat[:, 0].tolist() == [1, 0, 0]  # a -> 1; unseen and rare -> OOV 0
    assert pre.layout().categorical == (("c", 2),)


def test_hashing_is_deterministic_and_in_range():
    t = pa.table({"c": [f"id{i}" for i in range(1000)], "y": [0] * 1000})
    pre = Preprocessor(Schema([CategoricalFeature("c", hash_buckets=64)], [TaskSpec("y")])).fit(t)
    a, b = pre.transform(t).cat[:, 0], pre.transform(t).cat[:, 0]
    assert (a == b).all() and a.min() >= 1 and a.max() <= 64 and len(np.unique(a)) > 50


def test_numeric_transforms_and_missing():
    train = pa.table({"x": [1.0, 2.0, None, 4.0], "y": [0, 1, 0, 1]})
    for tr in ("standardize", "log", "quantile"):
        pre = Preprocessor(
            Schema([NumericFeature("x", transform=tr, n_buckets=2, missing_indicator=True)], [TaskSpec("y")])
        ).fit(train)
        enc = pre.transform(train)
        assert np.isfinite(enc.num).all()
        assert enc.num[:, -1].tolist() == [0, 0, 1, 0]


def test_multi_valued_padding_and_pooling_layout():
    t = make_table(50)
    pre = Preprocessor(tiny_schema()).fit(t)
    enc = pre.transform(t)
    g = enc.multi["genres"]
    assert g.shape == (50, 3)
    row = t.column("genres").to_pylist().index("c|a|d")
    assert (g[row] > 0).sum() == 3
    row = t.column("genres").to_pylist().index("")
    assert (g[row] == 0).all()


def test_mask_from_other_label(tiny_bundle):
    tr = tiny_bundle.train
    j = tr.task_names.index("purchase")
    click = tr.labels[:, tr.task_names.index("click")]
    assert (tr.masks[:, j] == click).all()


@pytest.mark.parametrize(
    "table, schema, match",
    [
        (
            pa.table({"a": ["x"], "y": [1]}),
            Schema([CategoricalFeature("missing_col")], [TaskSpec("y")]),
            "missing column 'missing_col'",
        ),
        (
            pa.table({"a": ["x", "y"], "y": [0, 2]}),
            Schema([CategoricalFeature("a")], [TaskSpec("y")]),
            "must be 0 or 1",
        ),
        (
            pa.table({"x": pa.array([None, None], pa.float64()), "y": [0, 1]}),
            Schema([NumericFeature("x")], [TaskSpec("y")]),
            "no finite values",
        ),
        (pa.table({"x": ["a", "b"], "y": [0, 1]}), Schema([NumericFeature("x")], [TaskSpec("y")]), "must be numeric"),
    ],
)
def test_bad_input_errors_name_file_and_column(table, schema, match):
    with pytest.raises(SchemaError, match=match) as err:
        pre = Preprocessor(schema).fit(table, source="train.csv")
        pre.transform(table, source="train.csv")
    assert "train.csv" in str(err.value)


def test_reader_csv_gz_parquet_and_errors(tmp_path):
    t = make_table(20)
    pq.write_table(t, tmp_path / "d.parquet")
    text = "a;b\n1;NA\n2;x\n"
    with gzip.open(tmp_path / "d.csv.gz", "wt") as fh:
        fh.write(text)
    assert read_table(tmp_path / "d.parquet").num_rows == 20
    g = read_table(tmp_path / "d.csv.gz", separator=";")
    assert g.column("b").to_pylist() == ["NA", "x"]  # "NA" is a value, not null
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match="empty"):
        read_table(tmp_path / "empty.csv")
    with pytest.raises(SchemaError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="could not read"):
        read_table(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="missing column"):
        read_table(tmp_path / "d.parquet", columns=["zzz"])
