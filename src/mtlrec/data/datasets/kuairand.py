"""KuaiRand (Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed Videos",
CIKM'22): short-video logs of Kuaishou with many feedback signals, used as multi-task data (is_click, long_view,
is_like, ... as tasks).

Download: https://kuairand.com (KuaiRand-Pure / -1K / -27K; licence CC BY-SA 4.0). Raw format (``format="raw"``),
comma-separated with headers, in ``data_dir``:

* the logs ``log_standard_*.csv`` (and ``log_random_*.csv``): ``user_id, video_id, date, hourmin, time_ms,
  is_click, is_like, is_follow, is_comment, is_forward, is_hate, long_view, play_time_ms, duration_ms,
  profile_stay_time, comment_stay_time, is_profile_enter, is_rand, tab``;
* ``user_features*.csv`` (``user_id``, ``user_active_degree``, the count columns and their ``*_range`` buckets,
  ``onehot_feat0..17``) and ``video_features_basic*.csv`` (``video_id, author_id, video_type, upload_dt,
  upload_type, visible_status, video_duration, server_width, server_height, music_id, music_type, tag``), joined
  on ``user_id`` / ``video_id`` when present.

``format="joined"`` reads one CSV in which the logs are already joined with user and video columns (the layout of
the shared ``kuairand_sample.csv``, which carries ``is_click`` and the play/stay times but no ``long_view`` or
``is_like``: use ``tasks=["is_click", "play_time_ms"]`` there).

Tasks (``tasks``): binary signals (:data:`BINARY`) as binary tasks; the times (:data:`TIMES`) as regression on
``log1p`` of the milliseconds. A signal never is an input. Binary tasks report GAUC over ``user_id`` besides AUC
(``gauc=True``). Split: ``random`` 8:1:1 by ``split_seed`` (default) or ``time`` (by ``time_ms``, else ``date``
and ``hourmin``: the latest rows are test, the ones before valid).
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

BINARY = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "is_profile_enter")
TIMES = ("play_time_ms", "profile_stay_time", "comment_stay_time")
#: never inputs: the feedback signals and what is only known after the impression
NEVER_INPUTS = {*BINARY, *TIMES, "time_ms", "date", "hourmin", "is_rand", "upload_dt"}
CATEGORICAL = (
    "user_id", "video_id", "tab", "author_id", "video_type", "upload_type", "visible_status", "music_id",
    "music_type", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)  # fmt: skip
NUMERIC = ("duration_ms", "video_duration", "follow_user_num", "fans_user_num", "friend_user_num", "register_days",
           "server_width", "server_height")  # fmt: skip
SPLITS = ("random", "time")
FORMATS = ("raw", "joined")


def split_rows(table: pa.Table, how: str, fractions: tuple, seed: int, time: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of train, valid, test: ``random`` by ``seed``, or ``time`` (sorted by ``time``; the latest
    ``fractions[2]`` of the rows are test, the ``fractions[1]`` before them valid)."""
    if how not in SPLITS:
        raise unknown_name("split", how, SPLITS)
    if how == "random":
        return random_split(table.num_rows, tuple(fractions), seed)
    order = np.argsort(time, kind="stable")
    n = len(order)
    n_test = int(round(fractions[2] / sum(fractions) * n))
    n_valid = int(round(fractions[1] / sum(fractions) * n))
    return [order[: n - n_valid - n_test], order[n - n_valid - n_test : n - n_test], order[n - n_test :]]


def task_specs(tasks: list[str], columns: list[str], group: str | None, where: str) -> tuple[list[TaskSpec], dict]:
    """TaskSpecs and the label columns to derive (``<time>_log1p``) for the requested signals."""
    specs, derived = [], {}
    for t in tasks:
        if t not in BINARY and t not in TIMES:
            raise unknown_name(f"{where} task", t, (*BINARY, *TIMES))
        if t not in columns:
            raise UserError(f"{where}: task {t!r} needs column {t!r}, which the file lacks")
        if t in BINARY:
            metrics = ["auc", "gauc", "logloss"] if group else None
            specs.append(TaskSpec(t, metrics=metrics, group=group))
        else:
            specs.append(TaskSpec(t, type="regression", label=f"{t}_log1p"))
            derived[f"{t}_log1p"] = t
    return specs, derived


def _find(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def read_raw(root: Path, logs: str) -> tuple[pa.Table, list[Path]]:
    files = _find(root, logs)
    if not files:
        raise FileNotFoundError(
            f"kuairand: no {logs} in {root}; download KuaiRand (https://kuairand.com) and pass its data folder"
        )
    table = pa.concat_tables([read_table(f) for f in files], promote_options="default")
    used = list(files)
    for pattern, key in (("user_features*.csv", "user_id"), ("video_features_basic*.csv", "video_id")):
        side = _find(root, pattern)
        if side:
            extra = read_table(side[0])
            extra = extra.select([c for c in extra.column_names if c == key or c not in table.column_names])
            table = table.join(extra, key, join_type="left outer")
            used.append(side[0])
    return table, used


@register_dataset(
    "kuairand",
    description="KuaiRand short-video logs (CIKM'22): is_click, long_view, is_like, ... as binary tasks (AUC and "
    "GAUC over users), play/stay times as log1p regression; user and video features joined; random or time split",
    source="log_standard_*.csv [+ user_features*.csv, video_features_basic*.csv] in data_dir (kuairand.com), or "
    "one joined CSV (format='joined')",
)
def load_kuairand(
    data_dir: str | Path | None = None,
    format: str = "raw",
    tasks: list[str] | tuple = ("is_click", "long_view", "is_like"),
    logs: str = "log_standard_*.csv",
    file: str = "kuairand_sample.csv",
    split: str = "random",
    fractions: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    gauc: bool = True,
    min_count: int = 1,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """``logs``: the glob of log files (raw format); ``file``: the joined CSV in ``data_dir`` (joined format)."""
    if format not in FORMATS:
        raise unknown_name("kuairand format", format, FORMATS)
    if split not in SPLITS:
        raise unknown_name("kuairand split", split, SPLITS)
    root = Path(data_dir) if data_dir else default_data_dir() / "kuairand"
    tasks = list(tasks)

    def build() -> DataBundle:
        if format == "raw":
            table, used = read_raw(root, logs)
        else:
            used = [root / file]
            if not used[0].exists():
                raise FileNotFoundError(f"kuairand: {used[0]} not found (format='joined' reads one joined CSV)")
            table = read_table(used[0])
        specs, derived = task_specs(tasks, table.column_names, "user_id" if gauc else None, "kuairand")
        for label, source in derived.items():
            x = pc.cast(table[source], pa.float64())
            table = table.append_column(label, pc.ln(pc.add(pc.max_element_wise(x, 0.0), 1.0)))
        cols = set(table.column_names) - NEVER_INPUTS
        feats: list[Any] = [CategoricalFeature(c, min_count=min_count) for c in CATEGORICAL if c in cols]
        if "tag" in cols:
            feats.append(MultiValuedFeature("tag", separator=",", max_len=4))
        feats += [NumericFeature(c, transform="log") for c in NUMERIC if c in cols]
        string_cols = [c for c in CATEGORICAL if c in table.column_names] + (["tag"] if "tag" in cols else [])
        for c in string_cols:
            table = table.set_column(table.column_names.index(c), c, pc.cast(table[c], pa.string()))
        schema = Schema(features=feats, tasks=specs)
        time = _time_of(table) if split == "time" else None
        parts = split_rows(table, split, fractions, split_seed, time)
        tables = {k: table.take(p) for k, p in zip(("train", "valid", "test"), parts, strict=True)}
        meta = {
            "format": format,
            "files": [str(p) for p in used],
            "split": {"by": split, "fractions": list(fractions), "split_seed": split_seed},
            "rows": {k: t.num_rows for k, t in tables.items()},
        }
        return encode_tables("kuairand", schema, tables, meta)

    sources = _find(root, logs) if format == "raw" else [root / file]
    key = [[_fingerprint(p) for p in sources if p.exists()], format, tasks, logs, split, list(fractions)]
    return cached("kuairand", [*key, split_seed, gauc, min_count], cache_dir, use_cache, build)


def _time_of(table: pa.Table) -> np.ndarray:
    if "time_ms" in table.column_names:
        return np.asarray(pc.cast(table["time_ms"], pa.int64()).to_numpy(zero_copy_only=False))
    if "date" in table.column_names:
        d = np.asarray(pc.cast(table["date"], pa.int64()).to_numpy(zero_copy_only=False))
        h = table["hourmin"] if "hourmin" in table.column_names else pa.array(np.zeros(len(d), np.int64))
        return d * 10_000 + np.asarray(pc.cast(h, pa.int64()).to_numpy(zero_copy_only=False))
    raise UserError("kuairand: split='time' needs a time_ms or date column")
