"""Amazon-Electronics-style reviews with the DML paper's negative sampling and tasks (MODELS.md B.3).

Input: a CSV (optionally gzipped, or Parquet) with a header and the columns ``user_id, item_id, time, cate_id`` (the
DIN/DeepCTR preprocessing of the Amazon Electronics reviews; the full data: "Amazon product data", J. McAuley,
https://jmcauley.ucsd.edu/data/amazon/, ``reviews_Electronics_5.json.gz`` + ``meta_Electronics.json.gz``), and
optionally a ``rating`` column (the review's 1–5 stars, ``overall`` in the raw reviews). ``column_names`` reads a
file without a header.

Augmentation (B.3, following the paper): for every user, as many *un-rated* items as rated ones are sampled
(seeded), one per rated row, distinct within a user and never an item the user rated. Vectorised: all negatives
are drawn at once and the collisions re-drawn in rounds (a loop over rounds, not rows); a user who rated nearly the
whole catalogue may keep fewer negatives after ``max_rounds`` (counted in ``meta['negatives_missing']``). A
negative row takes its item's category and the time of the rated row it pairs with.

Tasks: ``rated`` (1 for a review row, 0 for a sampled item) and ``positive`` ("positively rated"; 0 for sampled
items). [A] ``positive``:

* with a rating column: rating ≥ ``positive_threshold`` (4), the paper's reading;
* without one (the DIN-style file has no stars) the label cannot be taken from the data; ``positive="auto"`` then
  uses the documented proxy ``repeat_category``: a rated item is "positive" when the user rated at least
  ``repeat_min`` (2) items of that category, i.e. a repeated interest rather than a one-off purchase. ``"error"``
  refuses such files instead. ``bundle.meta['positive_definition']`` records which definition was used.

Item sampling (``sampling``): ``uniform`` over the catalogue (default [A]) or ``popularity`` (items drawn in
proportion to their number of reviews). Features: user_id, item_id, cate_id. Split: random 8:1:1 over the augmented
rows with ``split_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.bundle import DataBundle
from mtlrec.data.datasets import register_dataset
from mtlrec.data.datasets.movielens import _fingerprint, cached, default_data_dir, split_and_encode
from mtlrec.data.readers import read_table
from mtlrec.schema import CategoricalFeature, Schema, SchemaError, TaskSpec

REQUIRED = ("user_id", "item_id", "time", "cate_id")


def sample_negatives(
    users: np.ndarray,
    items: np.ndarray,
    num_items: int,
    seed: int,
    *,
    probs: np.ndarray | None = None,
    max_rounds: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """For each rated row ``(users[i], items[i])`` (integer codes, items in ``[0, num_items)``) draw one item the
    user did not rate, distinct among that user's draws. Returns ``(row_index, item)`` of the negatives found."""
    rng = np.random.default_rng(seed)
    n = len(users)
    users = users.astype(np.int64)
    rated = np.unique(users * num_items + items.astype(np.int64))

    def draw(k: int) -> np.ndarray:
        return rng.choice(num_items, size=k, p=probs) if probs is not None else rng.integers(0, num_items, k)

    neg = draw(n)
    bad = np.ones(n, bool)
    for _ in range(max_rounds):
        keys = users * num_items + neg
        collide = np.isin(keys, rated)
        order = np.lexsort((collide, keys))  # among equal keys, a valid (non-colliding) row first
        dup = np.zeros(n, bool)
        sk = keys[order]
        dup[order[1:]] = sk[1:] == sk[:-1]
        bad = collide | dup
        if not bad.any():
            break
        neg[bad] = draw(int(bad.sum()))
    else:
        keys = users * num_items + neg
        _, first = np.unique(keys, return_index=True)
        keep_first = np.zeros(n, bool)
        keep_first[first] = True
        bad = np.isin(keys, rated) | ~keep_first
    ok = np.flatnonzero(~bad)
    return ok, neg[ok]


def positive_labels(table: pa.Table, positive: str, threshold: float, repeat_min: int) -> tuple[np.ndarray, str]:
    """``positive`` labels of the rated rows and the definition used (see the module docstring)."""
    has_rating = "rating" in table.column_names
    if positive == "rating" or (positive == "auto" and has_rating):
        if not has_rating:
            raise SchemaError("amazon: positive='rating' needs a 'rating' column")
        r = table["rating"].to_numpy(zero_copy_only=False).astype(float)
        return (r >= threshold).astype(np.int8), f"rating >= {threshold}"
    if positive == "error":
        raise SchemaError("amazon: the file has no 'rating' column, so 'positively rated' is undefined")
    if positive not in ("auto", "repeat_category"):
        raise ValueError(f"positive must be auto, rating, repeat_category or error, got {positive!r}")
    u = table["user_id"].to_numpy(zero_copy_only=False).astype(str)
    c = table["cate_id"].to_numpy(zero_copy_only=False).astype(str)
    _, pair_idx, counts = np.unique(np.char.add(np.char.add(u, "\x1f"), c), return_inverse=True, return_counts=True)
    return (counts[pair_idx] >= repeat_min).astype(
        np.int8
    ), f"repeat_category (user rated >= {repeat_min} items of the category)"


def augment(
    table: pa.Table,
    seed: int,
    *,
    positive: str = "auto",
    positive_threshold: float = 4.0,
    repeat_min: int = 2,
    sampling: str = "uniform",
) -> tuple[pa.Table, dict[str, Any]]:
    """Rated rows + one sampled un-rated item per rated row, with the ``rated`` and ``positive`` labels."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise SchemaError(f"amazon: missing columns {missing}; expected {list(REQUIRED)} (+ optional rating)")
    pos, definition = positive_labels(table, positive, positive_threshold, repeat_min)
    user_str = pc.cast(table["user_id"], pa.string()).to_numpy(zero_copy_only=False)
    item_str = pc.cast(table["item_id"], pa.string()).to_numpy(zero_copy_only=False)
    cate_str = pc.cast(table["cate_id"], pa.string()).to_numpy(zero_copy_only=False)
    _, ucode = np.unique(user_str, return_inverse=True)
    item_vals, icode, icount = np.unique(item_str, return_inverse=True, return_counts=True)
    first_row = np.zeros(len(item_vals), np.int64)
    first_row[icode[::-1]] = np.arange(len(icode))[::-1]  # first occurrence of each item
    item_cate = cate_str[first_row]
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be 'uniform' or 'popularity', got {sampling!r}")
    probs = icount / icount.sum() if sampling == "popularity" else None
    rows, neg_items = sample_negatives(ucode, icode, len(item_vals), seed, probs=probs)
    time = table["time"].to_numpy(zero_copy_only=False)
    n_pos, n_neg = table.num_rows, len(rows)
    out = pa.table(
        {
            "user_id": np.concatenate([user_str, user_str[rows]]),
            "item_id": np.concatenate([item_str, item_vals[neg_items]]),
            "cate_id": np.concatenate([cate_str, item_cate[neg_items]]),
            "time": np.concatenate([time, time[rows]]),
            "rated": np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)]),
            "positive": np.concatenate([pos, np.zeros(n_neg, np.int8)]),
        }
    )
    info = {
        "rated_rows": n_pos,
        "negatives": n_neg,
        "negatives_missing": n_pos - n_neg,
        "positive_definition": definition,
        "sampling": sampling,
        "negative_seed": seed,
    }
    return out, info


def amazon_schema() -> Schema:
    return Schema(
        features=[CategoricalFeature("user_id"), CategoricalFeature("item_id"), CategoricalFeature("cate_id")],
        tasks=[TaskSpec("rated", label="rated"), TaskSpec("positive", label="positive")],
    )


@register_dataset(
    "amazon_electronics",
    description="Amazon Electronics reviews (user_id, item_id, time, cate_id[, rating]) + as many sampled "
    "un-rated items per user; tasks rated and positive (DML paper); random 8:1:1 split",
    source="a CSV/Parquet file (path or data_dir/amazon-electronics/*); DIN-style preprocessing of McAuley's data",
)
def load_amazon_electronics(
    path: str | Path | None = None,
    data_dir: str | Path | None = None,
    split_seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    negative_seed: int = 0,
    positive: str = "auto",
    positive_threshold: float = 4.0,
    repeat_min: int = 2,
    sampling: str = "uniform",
    column_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    if path is None:
        root = Path(data_dir) if data_dir else default_data_dir()
        found = sorted((root / "amazon-electronics").glob("*.csv*")) if (root / "amazon-electronics").is_dir() else []
        if not found:
            raise FileNotFoundError(
                f"amazon_electronics: pass path=... (no file under {root / 'amazon-electronics'}); build the CSV "
                "(user_id,item_id,time,cate_id[,rating]) from https://jmcauley.ucsd.edu/data/amazon/ Electronics"
            )
        path = found[0]
    path = Path(path)
    params = {
        "split": list(split),
        "split_seed": split_seed,
        "negative_seed": negative_seed,
        "positive": positive,
        "positive_threshold": positive_threshold,
        "repeat_min": repeat_min,
        "sampling": sampling,
        "column_names": list(column_names) if column_names else None,
    }
    schema = amazon_schema()

    def build() -> DataBundle:
        table = read_table(path, column_names=column_names, string_columns=["user_id", "item_id", "cate_id"])
        full, info = augment(
            table,
            negative_seed,
            positive=positive,
            positive_threshold=positive_threshold,
            repeat_min=repeat_min,
            sampling=sampling,
        )
        meta = {"source": str(path), "params": params, **info}
        return split_and_encode("amazon_electronics", schema, full, split, split_seed, meta)

    return cached("amazon_electronics", [schema.to_dict(), params, [_fingerprint(path)]], cache_dir, use_cache, build)
