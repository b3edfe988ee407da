"""Any CSV or Parquet files with a user schema, preprocessed by streaming (:mod:`mtlrec.data.stream`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlrec.data.bundle import DataBundle
from mtlrec.data.datasets import register_dataset
from mtlrec.data.stream import load_stream
from mtlrec.schema import Schema


def resolve_schema(schema: str | Path | dict[str, Any] | Schema) -> Schema:
    if isinstance(schema, str | Path):
        return Schema.load(schema)
    if isinstance(schema, dict):
        return Schema.from_dict(schema)
    return schema


@register_dataset(
    "files",
    description="your own CSV (any separator, .gz) or Parquet files with a schema YAML/JSON; each input a file, a "
    "list, a glob or a folder of shards, streamed in bounded memory; split random, by time or by user",
    source="train [valid] [test] files you point to",
)
def load_user_files(
    schema: str | Path | dict[str, Any] | Schema,
    train: str | list[str],
    valid: str | list[str] | None = None,
    test: str | list[str] | None = None,
    separator: str = ",",
    split: Any = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    column_names: list[str] | None = None,
    null_values: list[str] | None = None,
    encoding: str = "utf-8",
    batch_rows: int | None = None,
    shuffle: str | None = None,
    shuffle_block: int = 4096,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """``split``: three fractions (random by ``split_seed``) or ``{by: random|time|user, column, valid, test,
    seed}``; ``shuffle: block`` (with ``shuffle_block`` rows per block) for caches on slow disks. See docs/data.md."""
    read_options: dict[str, Any] = {"separator": separator, "encoding": encoding}
    if column_names:
        read_options["column_names"] = list(column_names)
    if null_values is not None:
        read_options["null_values"] = list(null_values)
    if batch_rows:
        read_options["batch_rows"] = int(batch_rows)
    return load_stream(
        resolve_schema(schema),
        train,
        valid,
        test,
        name="files",
        split=list(split) if isinstance(split, tuple) else split,
        split_seed=split_seed,
        read_options=read_options,
        shuffle=shuffle,
        shuffle_block=shuffle_block,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
