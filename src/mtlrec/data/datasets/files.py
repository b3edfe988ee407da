"""Any CSV or Parquet files with a user schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlrec.data.bundle import DataBundle, load_files
from mtlrec.data.datasets import register_dataset
from mtlrec.schema import Schema


@register_dataset(
    "files",
    description="your own CSV (any separator, .gz) or Parquet files with a schema YAML/JSON",
    source="train [valid] [test] files you point to",
)
def load_user_files(
    schema: str | Path | dict[str, Any] | Schema,
    train: str,
    valid: str | None = None,
    test: str | None = None,
    separator: str = ",",
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    column_names: list[str] | None = None,
    null_values: list[str] | None = None,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    if isinstance(schema, str | Path):
        schema = Schema.load(schema)
    elif isinstance(schema, dict):
        schema = Schema.from_dict(schema)
    read_options: dict[str, Any] = {"separator": separator}
    if column_names:
        read_options["column_names"] = column_names
    if null_values is not None:
        read_options["null_values"] = null_values
    return load_files(
        schema,
        train,
        valid,
        test,
        name="files",
        split=split,
        split_seed=split_seed,
        read_options=read_options,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
