"""Criteo (GDCN/FuxiCTR preprocessing) and Avazu readers: fixtures in the published raw formats and the shared
samples."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mtlrec.data.datasets import load_dataset
from mtlrec.data.datasets.avazu import COLUMNS as AVAZU_COLUMNS
from mtlrec.data.datasets.avazu import split_hour
from mtlrec.data.datasets.criteo import CAT_COLUMNS, INT_COLUMNS, bucket_counts, criteo_like_synthetic
from mtlrec.errors import UserError
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.test_criteo import write_criteo_tsv


def test_bucket_counts_follow_fuxictr():
    got = bucket_counts(pa.array([None, -1, 0, 1, 2, 3, 10, 100, 1000])).to_pylist()
    # v > 2: floor(ln(v)^2); else v - 2; missing: NULL
    assert got == ["NULL", "-3", "-2", "-1", "0", "1", "5", "21", "47"]


def test_criteo_reader_on_raw_tsv(tmp_path: Path):
    table, _ = criteo_like_synthetic(3000, seed=5, max_vocab=300)
    path = tmp_path / "train.txt"
    write_criteo_tsv(table, path)
    b = load_dataset("criteo", path=str(path), cache_dir=str(tmp_path / "c"))
    rows = {k: len(v) for k, v in b.splits.items()}  # streamed: each row's split drawn from the seed, 8:1:1
    assert sum(rows.values()) == 3000 and b.meta["streamed"]
    assert all(abs(rows[k] - f * 3000) <= 4 * (f * (1 - f) * 3000) ** 0.5 for k, f in (("valid", 0.1), ("test", 0.1)))
    head = load_dataset("criteo", path=str(path), use_cache=False, max_rows=1000)
    assert sum(len(v) for v in head.splits.values()) == 1000
    assert b.layout.num_fields == 39 and not b.layout.numeric  # integers bucketed into categories
    assert [t.name for t in b.tasks] == ["click"]
    # min count 10: every kept value of C1 occurs at least 10 times in the training split, so in the file
    vocab = b.preprocessor_state["vocabularies"]["C1"]
    assert vocab
    counts: dict[str, int] = {}
    for v in table["C1"].to_pylist():
        counts[v] = counts.get(v, 0) + 1
    assert all(counts.get(v, 0) >= 10 for v in vocab if v != "NULL")
    loose = load_dataset("criteo", path=str(path), use_cache=False, min_count=1)
    assert dict(loose.layout.categorical)["C1"] > dict(b.layout.categorical)["C1"]
    numeric = load_dataset("criteo", path=str(path), use_cache=False, numeric="log")
    assert list(numeric.layout.numeric) == INT_COLUMNS and len(numeric.layout.categorical) == len(CAT_COLUMNS)
    with pytest.raises(UserError, match="criteo numeric treatment"):
        load_dataset("criteo", path=str(path), numeric="bucketed")
    with pytest.raises(UserError, match="pass path"):
        load_dataset("criteo")


@needs_shared_data("samples/criteo_sample.txt")
def test_criteo_reader_on_sample():
    b = load_dataset("criteo", path=str(SHARED_DATA / "samples" / "criteo_sample.txt"), use_cache=False)
    assert sum(len(v) for v in b.splits.values()) == 200 and b.layout.num_fields == 39


def write_avazu(path: Path, n: int = 600, seed: int = 0) -> pa.Table:
    """The Kaggle layout: header, id, click, hour as YYMMDDHH, hashed string fields, integer C-fields; gzipped."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {
        "id": [str(10**18 + i) for i in range(n)],
        "click": rng.integers(0, 2, n).tolist(),
        "hour": (14102100 + 100 * rng.integers(0, 10, n) + rng.integers(0, 24, n)).tolist(),
    }
    for c in AVAZU_COLUMNS[3:]:
        cols[c] = [f"{v:08x}" if c.endswith(("_id", "_domain", "_category", "_ip", "_model")) else str(v)
                   for v in rng.integers(0, 6, n)]  # fmt: skip
    lines = [",".join(AVAZU_COLUMNS)] + [",".join(str(cols[c][i]) for c in AVAZU_COLUMNS) for i in range(n)]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return pa.table(cols)


def test_split_hour():
    hh, wd = split_hour(pa.array([14102100, 14102123, 14102701, 14103015]))
    assert hh.to_pylist() == [0, 23, 1, 15]
    assert wd.to_pylist() == [1, 1, 0, 3]  # 2014-10-21 Tuesday, 10-27 Monday, 10-30 Thursday
    with pytest.raises(UserError, match="YYMMDDHH"):
        split_hour(pa.array([14132100]))


def test_avazu_reader_on_raw_gz(tmp_path: Path):
    path = tmp_path / "train.gz"
    write_avazu(path)
    b = load_dataset("avazu", path=str(path), cache_dir=str(tmp_path / "c"))
    names = [n for n, _ in b.layout.categorical]
    assert names[:2] == ["hour_of_day", "weekday"] and "id" not in names and "hour" not in names
    assert len(names) == 2 + 21 and [t.name for t in b.tasks] == ["click"]
    assert dict(b.layout.categorical)["hour_of_day"] == 25  # 24 hours + OOV
    dropped = load_dataset("avazu", path=str(path), use_cache=False, hour_features="drop")
    assert dropped.layout.num_fields == 21
    with pytest.raises(UserError, match="did you mean 'drop'"):
        load_dataset("avazu", path=str(path), hour_features="dro")


@needs_shared_data("samples/avazu_sample.txt")
def test_avazu_reader_on_sample():
    b = load_dataset("avazu", path=str(SHARED_DATA / "samples" / "avazu_sample.txt"), use_cache=False)
    assert sum(len(v) for v in b.splits.values()) == 100 and b.layout.num_fields == 23
