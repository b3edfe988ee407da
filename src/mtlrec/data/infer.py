"""Guess a schema from a data file (``mtlrec init``): one pass over a sample of the rows, vectorised per column.

Rules, per column (``ColumnGuess.reason`` says which one fired):

- 0/1 integer (or boolean) columns are candidate binary tasks; those whose names look like labels (click, buy,
  label, target, ...) become tasks, the others stay categorical features with a note (if no name looks like a
  label, the last 0/1 column is the task);
- strings holding ``a|b`` lists in at least 5% of the rows become multi-valued features;
- other strings, and integers that look like ids (``*_id``) or have few distinct values, become categorical;
  an id-like column with more than ``HASH_ABOVE`` distinct values gets ``hash_buckets`` (a vocabulary that big
  costs memory and mostly holds rare values);
- floats, and integers with many distinct values, become numeric (``log`` when non-negative with skewness > 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.readers import read_table

LABEL_WORDS = (
    "label", "target", "click", "clicked", "ctr", "cvr", "conversion", "convert", "converted", "purchase", "buy",
    "bought", "order", "like", "liked", "share", "follow", "finish", "complete", "y", "is_click", "is_buy",
)  # fmt: skip
HASH_ABOVE = 100_000
FEW_DISTINCT = 50
SAMPLE_ROWS = 200_000


@dataclass
class ColumnGuess:
    column: str
    kind: str  # categorical | numeric | multi_valued | task
    reason: str
    options: dict[str, Any]
    candidate_task: bool = False


def _label_like(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", name.lower())
    return name.lower() in LABEL_WORDS or any(w in LABEL_WORDS and w != "y" for w in words)


def _id_like(name: str) -> bool:
    low = name.lower()
    return low == "id" or low.endswith("_id") or low.endswith("id") and len(low) > 2 and low[-3] in "_-"


def guess_column(name: str, col: pa.ChunkedArray) -> ColumnGuess:
    """One column's guess from its values (nulls ignored)."""
    t = col.type
    values = col.drop_null()
    distinct = len(pc.unique(values)) if len(values) else 0
    if pa.types.is_boolean(t):
        return ColumnGuess(name, "task", "true/false values", {}, candidate_task=True)
    if pa.types.is_integer(t):
        arr = values.to_numpy()
        if distinct <= 2 and len(arr) and set(np.unique(arr).tolist()) <= {0, 1}:
            return ColumnGuess(name, "task", "0/1 integers", {}, candidate_task=True)
        if _id_like(name) or distinct <= FEW_DISTINCT:
            return _categorical(name, distinct, "integer id" if _id_like(name) else f"{distinct} distinct integers")
        return _numeric(name, arr.astype(np.float64), f"integers, {distinct} distinct")
    if pa.types.is_floating(t):
        arr = values.to_numpy()
        finite = arr[np.isfinite(arr)]
        if len(finite) and set(np.unique(finite).tolist()) <= {0.0, 1.0}:
            return ColumnGuess(name, "task", "0/1 numbers", {}, candidate_task=True)
        return _numeric(name, finite, "floating-point numbers")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        nonempty = values.filter(pc.not_equal(values, ""))
        if len(nonempty) and pc.mean(pc.cast(pc.match_substring(nonempty, "|"), pa.int8())).as_py() >= 0.05:
            lengths = pc.list_value_length(pc.split_pattern(nonempty, "|")).to_numpy()
            max_len = int(min(max(np.percentile(lengths, 95), 1), 64))
            return ColumnGuess(
                name, "multi_valued", "'a|b' lists", {"separator": "|", "max_len": max_len, "pooling": "mean"}
            )
        return _categorical(name, distinct, f"strings, {distinct} distinct")
    return _categorical(name, distinct, f"{t} values")


def _categorical(name: str, distinct: int, reason: str) -> ColumnGuess:
    options: dict[str, Any] = {}
    if distinct > HASH_ABOVE:
        options["hash_buckets"] = 1 << int(np.ceil(np.log2(distinct)))
        reason += f"; {distinct} distinct ids: hashed"
    return ColumnGuess(name, "categorical", reason, options)


def _numeric(name: str, arr: np.ndarray, reason: str) -> ColumnGuess:
    options: dict[str, Any] = {"transform": "standardize"}
    if len(arr) > 2 and arr.min() >= 0 and arr.std() > 0:
        skew = float(np.mean(((arr - arr.mean()) / arr.std()) ** 3))
        if skew > 2:
            options["transform"] = "log"
            reason += f"; non-negative, skewed ({skew:.1f}): log"
    return ColumnGuess(name, "numeric", reason, options)


def guess_schema(path: str | Path, separator: str = ",", sample_rows: int = SAMPLE_ROWS) -> list[ColumnGuess]:
    """Every column's guess (``kind`` ``task`` for the label columns chosen as tasks; at least one task)."""
    table = read_table(path, separator=separator)
    if table.num_rows > sample_rows:
        table = table.slice(0, sample_rows)
    guesses = [guess_column(n, table.column(n)) for n in table.column_names]
    candidates = [g for g in guesses if g.candidate_task]
    chosen = [g for g in candidates if _label_like(g.column)] or candidates[-1:]
    for g in candidates:
        if g not in chosen:
            g.kind, g.reason = "categorical", g.reason + "; a candidate task (move it to tasks if it is a label)"
    for g in chosen:
        g.reason += "; the name looks like a label" if _label_like(g.column) else "; the last 0/1 column"
    return guesses
