"""AliExpress, KuaiRand and WeChat-2021 readers: fixtures in the published raw formats and the shared samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from mtlrec.data.datasets import list_datasets, load_dataset
from mtlrec.data.datasets.aliexpress import CATEGORICAL, COLUMNS, NUMERICAL
from mtlrec.errors import UserError
from tests.conftest import SHARED_DATA, needs_shared_data


def write_csv(table: pa.Table, path: Path) -> None:
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


# ---- AliExpress ---------------------------------------------------------------------------------------------------
def aliexpress_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {"search_id": np.arange(n)}
    cols |= {c: rng.integers(0, 5, n) for c in CATEGORICAL}
    cols |= {c: rng.random(n).round(4) for c in NUMERICAL}
    click = (rng.random(n) < 0.3).astype(np.int64)
    cols |= {"click": click, "conversion": click * (rng.random(n) < 0.2)}
    return pa.table({c: cols[c] for c in COLUMNS})


def test_aliexpress_country_folders(tmp_path: Path):
    for k, country in enumerate(("NL", "ES", "FR", "US")):
        d = tmp_path / f"AliExpress_{country}"
        d.mkdir()
        write_csv(aliexpress_table(300, k), d / "train.csv")
        write_csv(aliexpress_table(100, 10 + k), d / "test.csv")
    b = load_dataset("aliexpress", data_dir=str(tmp_path), country="ES", use_cache=False)
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 270, "valid": 30, "test": 100}
    assert [t.name for t in b.tasks] == ["ctr", "ctcvr"] and b.layout.num_fields == 16 + 63
    assert all(t.mask is None for t in b.tasks)  # CTCVR: conversion over every impression
    cvr = load_dataset("aliexpress", data_dir=str(tmp_path), country="ES", use_cache=False, tasks="ctr_cvr")
    assert cvr.tasks[1].mask == "click" and np.asarray(cvr.test.masks)[:, 1].sum() < len(cvr.test)
    every = load_dataset("aliexpress", data_dir=str(tmp_path), country="all", use_cache=False)
    assert len(every.test) == 400 and dict(every.layout.categorical)["country"] == 5
    with pytest.raises(UserError, match="unknown aliexpress country 'UK'"):
        load_dataset("aliexpress", data_dir=str(tmp_path), country="UK")
    with pytest.raises(FileNotFoundError, match="tianchi"):
        load_dataset("aliexpress", data_dir=str(tmp_path / "none"), country="NL")


@needs_shared_data("samples/aliexpress_train_sample.csv")
def test_aliexpress_sample():
    b = load_dataset(
        "aliexpress",
        data_dir=str(SHARED_DATA / "samples"),
        train_file="aliexpress_train_sample.csv",
        test_file="aliexpress_test_sample.csv",
        use_cache=False,
    )
    assert (len(b.train) + len(b.valid), len(b.test)) == (100, 20) and b.layout.num_fields == 79


# ---- KuaiRand -----------------------------------------------------------------------------------------------------
LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
               "comment_stay_time", "is_profile_enter", "is_rand", "tab"]  # fmt: skip


def write_kuairand(root: Path, n: int = 800, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cols = {c: rng.integers(0, 2, n) for c in LOG_COLUMNS}
    cols |= {"user_id": rng.integers(0, 30, n), "video_id": rng.integers(0, 50, n), "tab": rng.integers(0, 4, n)}
    cols |= {"date": 20220408 + rng.integers(0, 14, n), "hourmin": rng.integers(0, 24, n) * 100}
    cols |= {"time_ms": 1649376000000 + rng.integers(0, 10**9, n), "play_time_ms": rng.integers(0, 60_000, n)}
    cols |= {"duration_ms": rng.integers(5_000, 90_000, n), "profile_stay_time": rng.integers(0, 100, n)}
    half = n // 2
    table = pa.table({c: cols[c] for c in LOG_COLUMNS})
    write_csv(table.slice(0, half), root / "log_standard_4_08_to_4_21_1k.csv")
    write_csv(table.slice(half), root / "log_standard_4_22_to_5_08_1k.csv")
    users = pa.table({"user_id": np.arange(30), "user_active_degree": np.array(["high_active", "full_active"] * 15),
                      "follow_user_num": rng.integers(0, 500, 30), "onehot_feat0": rng.integers(0, 2, 30)})  # fmt: skip
    write_csv(users, root / "user_features_1k.csv")
    videos = pa.table({"video_id": np.arange(50), "author_id": rng.integers(0, 10, 50),
                       "video_type": np.array(["NORMAL", "AD"] * 25), "upload_dt": ["2022-04-01"] * 50,
                       "tag": np.array(["28", "28,13", "9"] * 16 + ["1", "2"])})  # fmt: skip
    write_csv(videos, root / "video_features_basic_1k.csv")


def test_kuairand_raw_logs_joined(tmp_path: Path):
    write_kuairand(tmp_path)
    b = load_dataset("kuairand", data_dir=str(tmp_path), use_cache=False)
    assert [t.name for t in b.tasks] == ["is_click", "long_view", "is_like"]
    assert all(t.group == "user_id" and "gauc" in t.metrics for t in b.tasks)
    names = set(b.layout.field_names)
    assert {"user_id", "video_id", "author_id", "video_type", "user_active_degree", "tag"} <= names
    assert not names & {"is_click", "long_view", "is_like", "play_time_ms", "time_ms", "date", "upload_dt"}
    assert len(b.train) == 640 and b.meta["rows"]["test"] == 80
    by_time = load_dataset("kuairand", data_dir=str(tmp_path), use_cache=False, split="time")
    assert by_time.meta["split"]["by"] == "time"
    reg = load_dataset("kuairand", data_dir=str(tmp_path), use_cache=False, tasks=["is_click", "play_time_ms"])
    assert reg.tasks[1].type == "regression" and np.asarray(reg.train.labels)[:, 1].max() < np.log1p(60_000)
    with pytest.raises(UserError, match="kuairand task"):
        load_dataset("kuairand", data_dir=str(tmp_path), use_cache=False, tasks=["is_clik"])
    with pytest.raises(FileNotFoundError, match="kuairand.com"):
        load_dataset("kuairand", data_dir=str(tmp_path / "none"), use_cache=False)


@needs_shared_data("samples/kuairand_sample.csv")
def test_kuairand_joined_sample():
    root = SHARED_DATA / "samples"
    b = load_dataset("kuairand", data_dir=str(root), format="joined", tasks=["is_click", "play_time_ms"],
                     use_cache=False)  # fmt: skip
    assert sum(len(v) for v in b.splits.values()) == 200 and "user_id" in b.layout.field_names
    with pytest.raises(UserError, match="needs column 'long_view'"):
        load_dataset("kuairand", data_dir=str(root), format="joined", use_cache=False)


# ---- WeChat 2021 --------------------------------------------------------------------------------------------------
def write_wechat(root: Path, n: int = 700, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    actions = {"userid": rng.integers(0, 40, n), "feedid": rng.integers(0, 60, n), "date_": rng.integers(1, 15, n),
               "device": rng.integers(1, 3, n)}  # fmt: skip
    for c in ("read_comment", "comment", "like", "click_avatar", "forward", "follow", "favorite"):
        actions[c] = (rng.random(n) < 0.2).astype(np.int64)
    actions |= {"play": rng.integers(0, 60_000, n), "stay": rng.integers(0, 70_000, n)}
    write_csv(pa.table(actions), root / "user_action.csv")
    m = 60
    bgm = pa.array([None if i % 5 == 0 else str(i % 7) for i in range(m)], pa.string())
    feeds = pa.table({"feedid": np.arange(m), "authorid": rng.integers(0, 15, m),
                      "videoplayseconds": rng.integers(5, 60, m), "description": ["1 2 3"] * m,
                      "bgm_song_id": bgm, "bgm_singer_id": bgm,
                      "manual_keyword_list": ["11;12", "13", ""] * 20,
                      "manual_tag_list": ["81;82;83", "84", "81"] * 20})  # fmt: skip
    write_csv(feeds, root / "feed_info.csv")


def test_wechat_reader_on_raw_fixture(tmp_path: Path):
    write_wechat(tmp_path)
    b = load_dataset("wechat", data_dir=str(tmp_path), use_cache=False)
    assert [t.name for t in b.tasks] == ["read_comment", "like", "click_avatar", "forward"]
    assert all(t.group == "userid" for t in b.tasks)
    assert set(b.layout.field_names) == {"userid", "feedid", "device", "authorid", "bgm_song_id", "bgm_singer_id",
                                         "videoplayseconds", "manual_tag_list", "manual_keyword_list"}  # fmt: skip
    assert sum(len(v) for v in b.splits.values()) == 700
    day = load_dataset("wechat", data_dir=str(tmp_path), use_cache=False, split="day")
    assert day.meta["rows"]["test"] < 100 and day.meta["rows"]["train"] > 500  # day 14 / days 1..12
    with pytest.raises(UserError, match="did you mean 'like'"):
        load_dataset("wechat", data_dir=str(tmp_path), tasks=["likes"])
    with pytest.raises(FileNotFoundError, match="algo.weixin"):
        load_dataset("wechat", data_dir=str(tmp_path / "none"))


def test_gauc_end_to_end_on_wechat_fixture(tmp_path: Path):
    from mtlrec.models.registry import create_model
    from mtlrec.train.trainer import evaluate

    write_wechat(tmp_path)
    b = load_dataset("wechat", data_dir=str(tmp_path), use_cache=False, tasks=["read_comment", "like"])
    scores = evaluate(create_model("mmoe", b, embedding_dim=4), b.test)
    assert set(scores["like"]) == {"auc", "gauc", "gauc_skipped_groups", "logloss"}
    assert 0 <= scores["like"]["gauc_skipped_groups"] <= 40


def test_every_reader_is_listed_with_its_parameters():
    info = list_datasets()
    for name in ("ali_ccp", "aliexpress", "criteo", "avazu", "kuairand", "wechat", "census_income", "criteo_ru"):
        assert name in info, name
        assert "params" in info[name] and isinstance(info[name]["params"], dict)
    assert info["census_income"]["params"]["protocol"] == "mtlrec_v0"
    assert info["aliexpress"]["params"]["country"] == "NL"
    assert info["criteo"]["params"]["min_count"] == 10
