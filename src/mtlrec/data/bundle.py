"""A loaded data set: encoded train/valid/test splits, the tasks, the layout and how the splits were made."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtlrec.data.layout import FeatureLayout
from mtlrec.data.preprocess import EncodedData, Preprocessor
from mtlrec.data.readers import read_table
from mtlrec.data.splits import random_split
from mtlrec.data.store import cache_key, file_fingerprint, has_cache, load_splits, save_splits
from mtlrec.schema import Schema, SchemaError, TaskSpec


@dataclass
class DataBundle:
    """``splits``: ``train``, ``valid`` and ``test`` encoded arrays. ``meta`` records the source files, the split
    method and its seed, so every run can say exactly what it trained and evaluated on."""

    name: str
    splits: dict[str, EncodedData]
    schema: Schema
    meta: dict[str, Any] = field(default_factory=dict)
    preprocessor_state: dict[str, Any] | None = None

    @property
    def layout(self) -> FeatureLayout:
        return self.splits["train"].layout

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.schema.tasks

    @property
    def train(self) -> EncodedData:
        return self.splits["train"]

    @property
    def valid(self) -> EncodedData:
        return self.splits["valid"]

    @property
    def test(self) -> EncodedData:
        return self.splits["test"]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": {k: len(v) for k, v in self.splits.items()},
            "fields": self.layout.num_fields,
            "tasks": [t.name for t in self.tasks],
            **self.meta,
        }


def encode_tables(
    name: str, schema: Schema, tables: dict[str, pa.Table], meta: dict[str, Any], sources: dict[str, str] | None = None
) -> DataBundle:
    """Fit the preprocessing on ``tables['train']`` only and encode every split."""
    sources = sources or {}
    pre = Preprocessor(schema).fit(tables["train"], source=sources.get("train", f"{name}:train"))
    splits = {k: pre.transform(t, source=sources.get(k, f"{name}:{k}")) for k, t in tables.items()}
    check_sample_spaces(schema, splits["train"], sources.get("train", f"{name}:train"))
    return DataBundle(name, splits, schema, meta, pre.state_dict())


def check_sample_spaces(schema: Schema, train: EncodedData, source: str) -> None:
    """A task whose mask selects no training row cannot be trained: refuse it before training."""
    space = np.asarray(train.masks).sum(0)
    for j, t in enumerate(schema.tasks):
        if space[j] == 0 and len(train):
            raise SchemaError(
                f"{source}: task {t.name!r}: its mask column {t.mask!r} selects no training row "
                "(mask == 1 nowhere); check the column or drop the mask"
            )


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTLREC_CACHE", Path.home() / ".cache" / "mtlrec"))


def _file_fingerprint(path: str | Path) -> list[Any]:
    return file_fingerprint(path)  # size + mtime_ns + a content digest (see store.content_digest)


def load_files(
    schema: Schema,
    train: str | Path,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    *,
    name: str = "files",
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    valid_test_split: float | None = None,
    read_options: dict[str, Any] | None = None,
    transform: Callable[[pa.Table], pa.Table] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """Read, split, fit on train, encode and cache.

    Splits: with only ``train``, rows are split at random by ``split`` fractions with ``split_seed``. With
    ``train`` and ``test`` but no ``valid``, ``valid_test_split`` (e.g. 0.5) splits the test file at random into
    validation and test (the MMoE/PLE census protocol); else a ``split[1]`` share of train becomes validation.
    ``transform`` derives label and feature columns from the raw table (vectorised). The encoded arrays are cached
    under ``cache_dir`` keyed by the files, the schema and the split, and memory-mapped on the next run.
    """
    read_options = read_options or {}
    files = {k: v for k, v in {"train": train, "valid": valid, "test": test}.items() if v is not None}
    split_desc = {
        "split": list(split),
        "split_seed": split_seed,
        "valid_test_split": valid_test_split,
        "files": {k: str(v) for k, v in files.items()},
    }
    key = cache_key(
        name,
        schema.to_dict(),
        split_desc,
        read_options,
        {k: _file_fingerprint(v) for k, v in files.items()},
        getattr(transform, "__qualname__", None),
    )
    root = Path(cache_dir or default_cache_dir()) / f"{name}-{key}"
    if use_cache and has_cache(root):
        splits, manifest = load_splits(root)
        return DataBundle(name, splits, schema, manifest.get("meta", {}), manifest.get("preprocessor"))

    def read(path: str | Path) -> pa.Table:
        table = read_table(path, **read_options)
        return transform(table) if transform else table

    tables = {k: read(v) for k, v in files.items()}
    if "valid" not in tables:
        if "test" in tables and valid_test_split is not None:
            va, te = random_split(tables["test"].num_rows, (valid_test_split, 1 - valid_test_split), split_seed)
            tables["valid"], tables["test"] = tables["test"].take(va), tables["test"].take(te)
        elif "test" in tables:
            frac = split[1] / (split[0] + split[1])
            tr, va = random_split(tables["train"].num_rows, (1 - frac, frac), split_seed)
            tables["train"], tables["valid"] = tables["train"].take(tr), tables["train"].take(va)
        else:
            parts = random_split(tables["train"].num_rows, tuple(split), split_seed)
            full = tables["train"]
            tables = {k: full.take(p) for k, p in zip(("train", "valid", "test"), parts, strict=True)}
    meta = {"split": split_desc, "rows": {k: t.num_rows for k, t in tables.items()}}
    bundle = encode_tables(name, schema, tables, meta, {k: str(files.get(k, files["train"])) for k in tables})
    if use_cache:
        save_splits(root, bundle.splits, {"meta": meta, "preprocessor": bundle.preprocessor_state})
        splits, _ = load_splits(root)
        bundle.splits = splits
    return bundle


def positive_rate(data: EncodedData) -> np.ndarray:
    m = np.asarray(data.masks)
    return (np.asarray(data.labels) * m).sum(0) / np.maximum(m.sum(0), 1)
