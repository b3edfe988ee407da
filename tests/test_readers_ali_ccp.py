"""Ali-CCP: the raw skeleton + common-feature format (fixtures written in the published layout, streamed in
small batches), the AITM protocol, and the processed-CSV format of the shared sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtlrec.data.datasets import load_dataset
from mtlrec.data.datasets.ali_ccp import AITM_FIELDS, convert_raw, parse_feature_lists
from mtlrec.errors import UserError
from tests.conftest import SHARED_DATA, needs_shared_data

USER_FIELDS = AITM_FIELDS[:9]
OTHER_FIELDS = AITM_FIELDS[9:]


def feature_list(pairs: list[tuple[str, int]]) -> str:
    return "\x01".join(f"{f}\x02{i}\x031.0" for f, i in pairs)


def write_raw(root: Path, split: str, n: int, seed: int) -> dict:
    """``sample_skeleton_<split>.csv`` and ``common_features_<split>.csv`` in the published format: user fields in
    the common file (keyed by md5), item/context fields and an unused multi-valued field in the skeleton."""
    rng = np.random.default_rng(seed)
    n_users = 12
    md5 = [f"{seed:02d}{u:030x}" for u in range(n_users)]
    with open(root / f"common_features_{split}.csv", "w") as fh:
        for u in range(n_users):
            pairs = [(f, 1000 * k + u % (k + 2)) for k, f in enumerate(USER_FIELDS)] + [("109_14", 77), ("109_14", 78)]
            fh.write(f"{md5[u]},{len(pairs)},{feature_list(pairs)}\n")
    truth = {"click": [], "buy": [], "205": [], "101": []}
    with open(root / f"sample_skeleton_{split}.csv", "w") as fh:
        for s in range(n):
            u = int(rng.integers(0, n_users))
            click = int(rng.random() < 0.4)
            buy = int(rng.random() < (0.5 if click else 0.05))  # some click=0 & buy=1 rows to drop
            item = int(rng.integers(0, 5))
            pairs = [(f, 50_000 + 10 * k + item) for k, f in enumerate(OTHER_FIELDS[:-1])]
            if s % 7:  # context field absent on some rows
                pairs.append(("301", 90_000 + s % 3))
            index = md5[u] if s % 11 else "ffffffffffffffffffffffffffffffff"  # some md5 not in the common file
            fh.write(f"{s},{click},{buy},{index},{len(pairs)},{feature_list(pairs)}\n")
            truth["click"].append(click)
            truth["buy"].append(buy)
            truth["205"].append(50_000 + item)
            truth["101"].append(u % 2 if s % 11 else -1)
    return {k: np.array(v) for k, v in truth.items()}


def test_parse_feature_lists_vectorised():
    rows = [feature_list([("101", 5), ("205", 7)]), "", feature_list([("205", 8), ("999", 1), ("205", 9)])]
    import pyarrow as pa

    out = parse_feature_lists(pa.array(rows + [None]), ["101", "205"])
    assert out["101"].tolist() == [5, -1, -1, -1]
    assert out["205"].tolist() == [7, -1, 9, -1]  # the last entry of a field wins
    with pytest.raises(UserError, match="not an integer"):
        parse_feature_lists(pa.array(["101\x02abc\x031.0"]), ["101"])


def test_convert_raw_streams_joins_and_drops(tmp_path: Path):
    truth = write_raw(tmp_path, "train", 400, seed=1)
    out = tmp_path / "shards"
    counts = convert_raw(
        tmp_path / "sample_skeleton_train.csv", tmp_path / "common_features_train.csv", out, block_size=4096
    )
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) > 1  # several record batches: streamed, not read at once
    table = pq.read_table(out)
    keep = ~((truth["click"] == 0) & (truth["buy"] == 1))
    assert counts == {"rows_read": 400, "rows_kept": int(keep.sum()), "dropped_click0_buy1": int((~keep).sum())}
    assert counts["dropped_click0_buy1"] > 0
    assert table.column_names == ["click", "purchase", *AITM_FIELDS]
    assert table["click"].to_pylist() == truth["click"][keep].tolist()
    assert table["205"].to_pylist() == truth["205"][keep].tolist()
    user = table["101"].to_pylist()  # joined from the common file; null where the md5 is unknown
    assert user == [None if v < 0 else v for v in truth["101"][keep].tolist()]
    assert not ((table["click"].to_numpy() == 0) & (table["purchase"].to_numpy() == 1)).any()


def test_ali_ccp_raw_reader_aitm_protocol(tmp_path: Path):
    for split, seed in (("train", 2), ("test", 3)):
        write_raw(tmp_path, split, 600, seed)
    b = load_dataset("ali_ccp", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert [t.name for t in b.tasks] == ["ctr", "ctcvr"] and b.layout.num_fields == 18
    n_train = b.meta["conversion"]["train"]["rows_kept"]
    assert len(b.train) + len(b.valid) == n_train and abs(len(b.valid) - 0.1 * n_train) <= 4 * (0.09 * n_train) ** 0.5
    assert b.meta["streamed"]  # encoded batch by batch, never the whole shard set in memory
    assert len(b.test) == b.meta["conversion"]["test"]["rows_kept"]
    # min_count 11: the context field 301 (3 values, each ~170 times) is kept; every vocabulary is small
    sizes = dict(b.layout.categorical)
    assert sizes["f301"] == 4 and sizes["f205"] == 6
    # the second load reuses the shards and the encoded cache
    again = load_dataset("ali_ccp", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(np.asarray(again.test.cat), np.asarray(b.test.cat))
    cvr = load_dataset("ali_ccp", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), tasks="ctr_cvr")
    assert cvr.tasks[1].mask == "click"
    rare = load_dataset("ali_ccp", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), min_count=1000)
    assert all(v == 1 for _, v in rare.layout.categorical)  # every id rarer than 1000: all OOV


def test_ali_ccp_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="tianchi"):
        load_dataset("ali_ccp", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="did you mean 'raw'"):
        load_dataset("ali_ccp", data_dir=str(tmp_path), format="rwa")
    with pytest.raises(UserError, match="ali_ccp tasks"):
        load_dataset("ali_ccp", data_dir=str(tmp_path), tasks="ctr")


@needs_shared_data("samples/ali_ccp_train_sample.csv")
def test_ali_ccp_processed_sample(tmp_path: Path):
    files = {f"{k}_file": f"ali_ccp_{k if k != 'valid' else 'val'}_sample.csv" for k in ("train", "valid", "test")}
    b = load_dataset("ali_ccp", data_dir=str(SHARED_DATA / "samples"), format="processed", use_cache=False, **files)
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 100, "valid": 50, "test": 50}
    assert b.layout.num_fields == 18 and set(np.unique(b.train.labels)) <= {0.0, 1.0}
    full = load_dataset(
        "ali_ccp", data_dir=str(SHARED_DATA / "samples"), format="processed", use_cache=False, fields="all", **files
    )
    assert len(full.layout.numeric) == 8 and full.layout.num_fields > 18
