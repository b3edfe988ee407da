"""Streaming preprocessing: identical to the in-memory fit, splits decided while streaming, the cache and its key,
block shuffle, ``mtlrec prepare``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mtlrec.data import store
from mtlrec.data.batches import BatchIterator
from mtlrec.data.bundle import encode_tables
from mtlrec.data.preprocess import Preprocessor
from mtlrec.data.sketch import NumericAccumulator, numeric_stats
from mtlrec.data.stream import expand_inputs, load_stream, prepare_stream, stream_hooks
from mtlrec.data.vocab import VocabCounter
from mtlrec.schema import NumericFeature, Schema, SchemaError

from .conftest import make_table, tiny_schema


def _arrays_equal(a, b) -> bool:
    return (
        np.array_equal(np.asarray(a.cat), np.asarray(b.cat))
        and np.array_equal(np.asarray(a.num), np.asarray(b.num))
        and all(np.array_equal(np.asarray(a.multi[k]), np.asarray(b.multi[k])) for k in a.multi)
        and np.array_equal(np.asarray(a.labels), np.asarray(b.labels))
        and np.array_equal(np.asarray(a.masks), np.asarray(b.masks))
    )


def test_streamed_shards_encode_like_the_in_memory_fit(tmp_path):
    t = make_table(3000)
    tables = {"train": t.slice(0, 2000), "valid": t.slice(2000, 500), "test": t.slice(2500, 500)}
    ref = encode_tables("x", tiny_schema(), tables, {})
    (tmp_path / "tr").mkdir()
    pq.write_table(tables["train"].slice(0, 700), tmp_path / "tr" / "a.parquet", row_group_size=100)
    pq.write_table(tables["train"].slice(700), tmp_path / "tr" / "b.parquet", row_group_size=300)
    pacsv.write_csv(tables["valid"], tmp_path / "v.csv")
    pq.write_table(tables["test"], tmp_path / "te.parquet")
    b = load_stream(
        tiny_schema(), tmp_path / "tr", tmp_path / "v.csv", tmp_path / "te.parquet",
        cache_dir=tmp_path / "c", read_options={"batch_rows": 128},
    )  # fmt: skip
    for k in ("train", "valid", "test"):
        assert _arrays_equal(ref.splits[k], b.splits[k]), k
    assert b.preprocessor_state["vocabularies"] == ref.preprocessor_state["vocabularies"]
    assert b.preprocessor_state["numeric_stats"] == ref.preprocessor_state["numeric_stats"]
    assert b.train.cat.dtype == np.int16  # the narrowest type that holds the ids
    s = b.meta["summary"]
    assert s["rows"] == {"train": 2000, "valid": 500, "test": 500}
    assert s["tasks"]["purchase"]["train"]["rows_in_space"] == int(tables["train"]["click"].to_numpy().sum())
    assert set(s["vocabularies"]) == {"user", "item", "genres"}


def test_vocab_counter_merges_batches_and_paths():
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 400, 5000)
    one = VocabCounter()
    one.add(pa.array(x))
    many = VocabCounter()
    for part in np.array_split(x, 7):
        many.add(pa.array(part))
    dense = VocabCounter()  # non-negative ids: the dense bincount path, then spilled when -5 arrives
    dense.add(pa.array(np.abs(x[:2500])))
    dense.add(pa.array(x[2500:]))
    ref = sorted({str(v) for v, c in zip(*np.unique(x, return_counts=True), strict=True) if c >= 3})
    for c in (one, many):
        vocab, kind = c.finish(3)
        assert vocab.to_pylist() == ref and kind == "int"
    assert dense.finish(1)[0].to_pylist() == sorted({str(v) for v in np.r_[np.abs(x[:2500]), x[2500:]]})


def test_numeric_sketch_exact_below_cap_and_close_above():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 1, 20000)
    small = NumericAccumulator(cap=1 << 20)
    big = NumericAccumulator(cap=2000, seed=3)
    for part in np.array_split(x, 9):
        small.add(part)
        big.add(part)
    f = NumericFeature("x", transform="standardize")
    assert Preprocessor._fit_numeric(f, small, "s") == {
        "fill": float(x.mean()),
        "mean": float(x.mean()),
        "std": float(x.std()),
    }
    st = numeric_stats("standardize", 20, big)
    assert st["mean"] == pytest.approx(x.mean(), rel=1e-12) and st["std"] == pytest.approx(x.std(), rel=1e-9)
    q = numeric_stats("quantile", 4, big)["boundaries"]
    assert np.allclose(q, np.quantile(x, [0.25, 0.5, 0.75]), rtol=0.1)
    assert len(big.sample) == 2000


def _ts_schema() -> Schema:
    s = tiny_schema()
    s.features.append(NumericFeature("ts", transform="none"))
    return s


def test_time_user_and_random_splits(tmp_path):
    t = make_table(3000)
    ts = np.random.default_rng(0).permutation(3000).astype(np.float64)
    t = t.append_column("ts", pa.array(ts))
    pq.write_table(t, tmp_path / "d.parquet", row_group_size=500)
    b = load_stream(
        _ts_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c",
        split={"by": "time", "column": "ts", "valid": 0.1, "test": 0.2},
    )  # fmt: skip
    assert b.meta["rows"] == {"train": 2100, "valid": 300, "test": 600}
    j = b.layout.numeric.index("ts")
    tr, va, te = (np.asarray(b.splits[k].num[:, j]) for k in ("train", "valid", "test"))
    assert tr.max() < va.min() and va.max() < te.min()  # the latest rows are test

    u = load_stream(
        tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c", split={"by": "user", "column": "user"}
    )
    users = {k: set(np.asarray(u.splits[k].cat[:, 0]).tolist()) for k in u.splits}
    assert not users["train"] & users["valid"] and not users["train"] & users["test"]

    r1 = load_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c1", split=[0.8, 0.1, 0.1])
    r2 = load_stream(
        tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c2", split=[0.8, 0.1, 0.1],
        read_options={"batch_rows": 77},
    )  # fmt: skip
    for k in r1.splits:  # the random split does not depend on how the rows were batched
        assert _arrays_equal(r1.splits[k], r2.splits[k])
    assert abs(len(r1.valid) - 300) < 60
    with pytest.raises(SchemaError, match="split.by: unknown value 'tme'"):
        load_stream(
            tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c", split={"by": "tme", "column": "ts"}
        )


def test_train_and_test_files_carve_valid_out_of_train(tmp_path):
    t = make_table(2000)
    pq.write_table(t.slice(0, 1500), tmp_path / "tr.parquet")
    pq.write_table(t.slice(1500), tmp_path / "te.parquet")
    b = load_stream(tiny_schema(), tmp_path / "tr.parquet", test=tmp_path / "te.parquet", cache_dir=tmp_path / "c")
    assert len(b.test) == 500 and len(b.train) + len(b.valid) == 1500 and 100 < len(b.valid) < 260


def test_inputs_list_glob_folder_and_errors(tmp_path):
    for i in range(3):
        pq.write_table(make_table(50, seed=i), tmp_path / f"part-{i}.parquet")
    assert len(expand_inputs(str(tmp_path / "part-*.parquet"))) == 3
    assert len(expand_inputs(tmp_path)) == 3
    assert len(expand_inputs([tmp_path / "part-0.parquet", tmp_path / "part-2.parquet"])) == 2
    with pytest.raises(SchemaError, match="matches no CSV or Parquet"):
        expand_inputs(str(tmp_path / "nope-*.csv"))
    with pytest.raises(SchemaError, match="file not found"):
        expand_inputs(tmp_path / "missing.csv")


def test_cache_hit_and_same_size_rewrite_with_same_mtime_misses(tmp_path):
    t = make_table(400)
    path = tmp_path / "d.csv"
    pacsv.write_csv(t, path)
    st = path.stat()
    root1, _, cached = prepare_stream(tiny_schema(), path, cache_dir=tmp_path / "c")
    assert not cached and prepare_stream(tiny_schema(), path, cache_dir=tmp_path / "c")[2]
    flipped = t.set_column(t.column_names.index("click"), "click", pa.array(1 - t["click"].to_numpy()))
    flipped = flipped.set_column(flipped.column_names.index("purchase"), "purchase", pa.array(np.zeros(400, np.int64)))
    pacsv.write_csv(flipped, path)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and the same mtime, to the nanosecond
    root2, _, cached = prepare_stream(tiny_schema(), path, cache_dir=tmp_path / "c")
    assert not cached and root2 != root1  # the content digest tells the files apart


def test_content_digest_samples_large_files(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "FULL_HASH_BELOW", 1000)
    monkeypatch.setattr(store, "_WINDOW", 100)
    p = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 255, 50_000, dtype=np.uint8).tobytes())
    p.write_bytes(bytes(data))
    d0 = store.content_digest(p)
    data[-1] ^= 1  # the last window is always read
    p.write_bytes(bytes(data))
    assert store.content_digest(p) != d0


def test_failed_write_leaves_no_cache_and_stale_tmp_is_cleaned(tmp_path, monkeypatch):
    pq.write_table(make_table(300), tmp_path / "d.parquet")
    (tmp_path / "c").mkdir()
    calls = {"n": 0}
    orig = Preprocessor.transform

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-write")
        return orig(self, *a, **k)

    monkeypatch.setattr(Preprocessor, "transform", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c", read_options={"batch_rows": 64})
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(Preprocessor, "transform", orig)
    root, _, _ = prepare_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c")
    (tmp_path / "c" / (root.name + ".x1y2")).mkdir()  # what a kill -9 during a write leaves
    with stream_hooks(rebuild=True):
        assert not prepare_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c")[2]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [root.name]


def test_block_shuffle_is_a_resumable_permutation(tmp_path):
    pq.write_table(make_table(1000), tmp_path / "d.parquet")
    b = load_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c", shuffle="block", shuffle_block=50)
    it = BatchIterator(b.train, 64, shuffle=True, seed=3, window_blocks=3)
    assert it.block == 50
    order = it.order(2)
    assert sorted(order.tolist()) == list(range(len(b.train)))
    for start in (0, 1, 5):
        got = np.concatenate([bt.labels.numpy() for bt in it.epoch(2, start_batch=start)])
        want = np.asarray(b.train.labels)[
            np.concatenate([np.sort(order[i : i + 64]) for i in range(start * 64, len(order), 64)])
        ]
        assert np.array_equal(got, want)
    assert not np.array_equal(it.order(1), it.order(2))


def test_block_shuffle_reads_windows_from_the_cache_files_not_the_memory_maps(tmp_path, monkeypatch):
    """Block-shuffled batches from a memory-mapped cache are read with pread (RSS bounded by two windows) and
    equal, field by field, the rows gathered from the same arrays in memory."""
    pq.write_table(make_table(1000), tmp_path / "d.parquet")
    b = load_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c", shuffle="block", shuffle_block=50)
    assert isinstance(b.train.cat, np.memmap)
    inmem = b.train.take(np.arange(len(b.train)))
    inmem.shuffle_block = 50
    reads = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: reads.append(off) or real(fd, bufs, off))
    for start in (0, 3):
        mapped = list(BatchIterator(b.train, 64, shuffle=True, seed=3, window_blocks=3).epoch(1, start))
        n_reads = len(reads)
        plain = list(BatchIterator(inmem, 64, shuffle=True, seed=3, window_blocks=3).epoch(1, start))
        assert len(reads) == n_reads > 0  # the in-memory arrays are gathered in place
        assert len(mapped) == len(plain) == -(-len(b.train) // 64) - start
        for x, y in zip(mapped, plain, strict=True):
            for f in ("cat", "num", "labels", "masks"):
                assert torch.equal(getattr(x, f), getattr(y, f)), f
            assert x.multi.keys() == y.multi.keys() and all(torch.equal(x.multi[k], y.multi[k]) for k in x.multi)
    assert n_reads <= 2 * 6 * -(-len(b.train) // 50)  # one read per block and column, not per row


def test_prepare_command_prints_the_summary(tmp_path):
    from mtlrec.cli import app

    pq.write_table(make_table(600), tmp_path / "train.parquet")
    tiny_schema().save(tmp_path / "schema.yaml")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data: {{name: files, params: {{schema: {tmp_path / 'schema.yaml'}, train: {tmp_path / 'train.parquet'},"
        f" cache_dir: {tmp_path / 'cache'}, split: {{by: user, column: user}}}}}}\n"
    )
    res = CliRunner().invoke(app, ["prepare", str(cfg), "--quiet", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "rows: train" in res.output and "| user |" in res.output and "| purchase | click | valid |" in res.output
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert sum(summary["rows"].values()) == 600
    assert Path(json.loads((tmp_path / "s.json").read_text())["cache"]).is_dir()


def _fnv_reference(text: str) -> int:
    h = 1469598103934665603
    for byte in text.encode():
        if byte:
            h = ((h ^ byte) * 1099511628211) & ((1 << 64) - 1)
    return h


def test_fnv1a64_is_the_contract_hash_on_utf8_bytes():
    from mtlrec.data.vocab import fnv1a64

    vals = ["a", "bb", "", "é漢", "x\x00y", None, "abc" * 30, "a"]
    got = fnv1a64(pa.chunked_array([pa.array(vals[:4]), pa.array(vals[4:])]), null_text="None")
    assert [int(x) for x in got] == [_fnv_reference("None" if v is None else v) for v in vals]
    assert int(fnv1a64(pa.array([None, "q"]))[0]) == 0


def test_string_lookup_by_hash_index_equals_index_in():
    from mtlrec.data.vocab import VocabLookup

    rng = np.random.default_rng(0)
    vocab = sorted({str(v) for v in rng.integers(0, 10**6, 5000)} | {"é", "long" * 20})
    lookup = VocabLookup(vocab)
    assert lookup.hashes is not None
    batch = pa.array([*rng.integers(0, 10**6, 3000).astype(str).tolist(), None, "é", "long" * 20, "unseen"])
    fast = lookup.encode(batch)
    lookup.hashes = None  # the pyarrow index_in path
    slow = lookup.encode(batch)
    assert np.array_equal(fast, slow) and (fast > 0).sum() > 10 and fast[-4] == 0 and fast[-1] == 0


def test_binary_labels_and_masks_are_cached_as_bytes_and_read_as_float(tmp_path):
    pq.write_table(make_table(500), tmp_path / "d.parquet")
    binary = load_stream(tiny_schema(), tmp_path / "d.parquet", cache_dir=tmp_path / "c")
    mixed = load_stream(tiny_schema(with_regression=True), tmp_path / "d.parquet", cache_dir=tmp_path / "c")
    assert binary.train.labels.dtype == np.uint8 and binary.train.masks.dtype == np.uint8
    assert mixed.train.labels.dtype == np.float32 and mixed.train.masks.dtype == np.uint8
    # the same labels inside each task's sample space, zero outside it (where nothing reads them)
    m = np.asarray(mixed.train.masks) > 0
    want = np.where(m[:, :2], np.asarray(mixed.train.labels)[:, :2], 0)
    assert np.array_equal(np.asarray(binary.train.labels, np.float32), want)
    batch = next(iter(BatchIterator(binary.train, 64)))
    assert batch.labels.dtype == torch.float32 and batch.masks.dtype == torch.float32
