"""WeChat Big Data Challenge 2021 (WeChat Channels short videos; preliminary round), the multi-task data of DEPHN
(MODELS.md A.1.2: 7,317,882 actions; tasks read_comment, like, click_avatar) with forward, the competition's
fourth target.

Download: https://algo.weixin.qq.com (the 2021 challenge's ``wechat_algo_data1``; the competition's terms:
research use, no redistribution; no sample is shared here, the tests write fixtures in this format). Raw format,
comma-separated with headers, in ``data_dir``:

* ``user_action.csv``: ``userid, feedid, date_, device, read_comment, comment, like, play, stay, click_avatar,
  forward, follow, favorite`` (``date_`` = day 1..14; ``play``/``stay`` in milliseconds);
* ``feed_info.csv``: ``feedid, authorid, videoplayseconds, description, ocr, asr, bgm_song_id, bgm_singer_id,
  manual_keyword_list, machine_keyword_list, manual_tag_list, machine_tag_list, description_char, ocr_char,
  asr_char`` (lists separated by ``;``; the text columns are token ids and are not used here).

Protocol ([A] MODELS.md A.1.2, DEPHN gives none): inputs ``userid, feedid, device, authorid, bgm_song_id,
bgm_singer_id`` (categorical), ``videoplayseconds`` (numeric, log) and ``manual_tag_list``,
``manual_keyword_list`` (multi-valued, ``;``); the actions are never inputs (nor ``play``/``stay``, known only
afterwards). Tasks (``tasks``): any of :data:`ACTIONS`, default ``read_comment, like, click_avatar, forward``,
each with AUC and GAUC over ``userid`` (the competition's uAUC averages users unweighted; GAUC weights them by
rows). Split: ``random`` 8:1:1 by ``split_seed`` (default) or ``day`` (days ``< valid_day`` train,
``valid_day`` valid, the days after it test; default 13, i.e. test = day 14, the competition's offline day).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.bundle import DataBundle, encode_tables
from mtlrec.data.datasets import register_dataset
from mtlrec.data.datasets.movielens import _fingerprint, cached, default_data_dir
from mtlrec.data.readers import read_table
from mtlrec.data.splits import random_split
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, NumericFeature, Schema, TaskSpec

ACTIONS = ("read_comment", "like", "click_avatar", "forward", "comment", "follow", "favorite")
ACTION_COLUMNS = ["userid", "feedid", "date_", "device", "read_comment", "comment", "like", "play", "stay",
                  "click_avatar", "forward", "follow", "favorite"]  # fmt: skip
FEED_COLUMNS = ["feedid", "authorid", "videoplayseconds", "bgm_song_id", "bgm_singer_id", "manual_keyword_list",
                "manual_tag_list"]  # fmt: skip
CATEGORICAL = ("userid", "feedid", "device", "authorid", "bgm_song_id", "bgm_singer_id")
MULTI = ("manual_tag_list", "manual_keyword_list")
SPLITS = ("random", "day")


def read_wechat(root: Path, actions_file: str, feeds_file: str) -> tuple[pa.Table, list[Path]]:
    paths = [root / actions_file, root / feeds_file]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(
                f"wechat: {p} not found; download wechat_algo_data1 of the WeChat Big Data Challenge 2021 "
                "(https://algo.weixin.qq.com) and pass the folder with user_action.csv and feed_info.csv"
            )
    actions = read_table(paths[0], string_columns=["userid", "feedid", "device"])
    feeds = read_table(paths[1], string_columns=[c for c in FEED_COLUMNS if c != "videoplayseconds"])
    for table, need, path in ((actions, ACTION_COLUMNS, paths[0]), (feeds, FEED_COLUMNS, paths[1])):
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise UserError(f"wechat: {path} lacks column(s) {missing}; is this the 2021 challenge's file?")
    feeds = feeds.select(FEED_COLUMNS)
    return actions.join(feeds, "feedid", join_type="left outer"), paths


@register_dataset(
    "wechat",
    description="WeChat Big Data Challenge 2021 (DEPHN): read_comment, like, click_avatar, forward (AUC and GAUC "
    "over users); user_action joined with feed_info; random 8:1:1 or by day (test = day 14)",
    source="user_action.csv + feed_info.csv in data_dir (wechat_algo_data1)",
)
def load_wechat(
    data_dir: str | Path | None = None,
    tasks: list[str] | tuple = ("read_comment", "like", "click_avatar", "forward"),
    split: str = "random",
    fractions: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    valid_day: int = 13,
    gauc: bool = True,
    min_count: int = 1,
    actions_file: str = "user_action.csv",
    feeds_file: str = "feed_info.csv",
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    if split not in SPLITS:
        raise unknown_name("wechat split", split, SPLITS)
    tasks = list(tasks)
    for t in tasks:
        if t not in ACTIONS:
            raise unknown_name("wechat task", t, ACTIONS)
    root = Path(data_dir) if data_dir else default_data_dir() / "wechat"

    def build() -> DataBundle:
        table, paths = read_wechat(root, actions_file, feeds_file)
        group = "userid" if gauc else None
        specs = [TaskSpec(t, metrics=["auc", "gauc", "logloss"] if gauc else None, group=group) for t in tasks]
        feats: list[Any] = [CategoricalFeature(c, min_count=min_count) for c in CATEGORICAL]
        feats.append(NumericFeature("videoplayseconds", transform="log"))
        feats += [MultiValuedFeature(c, separator=";", max_len=5, min_count=min_count) for c in MULTI]
        schema = Schema(features=feats, tasks=specs)
        if split == "random":
            parts = random_split(table.num_rows, tuple(fractions), split_seed)
        else:
            day = np.asarray(pc.cast(table["date_"], pa.int64()).to_numpy(zero_copy_only=False))
            parts = [np.flatnonzero(day < valid_day), np.flatnonzero(day == valid_day), np.flatnonzero(day > valid_day)]
            if not all(len(p) for p in parts):
                raise UserError(f"wechat: split='day' with valid_day={valid_day} leaves an empty split (days 1..14)")
        tables = {k: table.take(p) for k, p in zip(("train", "valid", "test"), parts, strict=True)}
        meta = {
            "files": [str(p) for p in paths],
            "split": {"by": split, "fractions": list(fractions), "split_seed": split_seed, "valid_day": valid_day},
            "rows": {k: t.num_rows for k, t in tables.items()},
        }
        return encode_tables("wechat", schema, tables, meta)

    files = [root / actions_file, root / feeds_file]
    key = [[_fingerprint(p) for p in files if p.exists()], tasks, split, list(fractions), split_seed, valid_day]
    return cached("wechat", [*key, gauc, min_count], cache_dir, use_cache, build)
