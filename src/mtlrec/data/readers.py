"""Readers for CSV (any separator, optionally gzip-compressed) and Parquet, built on pyarrow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.schema import SchemaError


def read_table(
    path: str | Path,
    *,
    separator: str = ",",
    column_names: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    null_values: Sequence[str] = ("",),
    skip_initial_space: bool = False,
    string_columns: Sequence[str] = (),
) -> pa.Table:
    """Read a CSV (``.csv``, ``.txt``, ``.tsv``, any of them ``.gz``) or Parquet file into an Arrow table.

    ``column_names``: names for a file without a header row. ``columns``: keep only these (a missing one is an
    error naming the file). ``null_values``: strings read as missing; everything else stays a value (so the
    string ``"NA"`` is a real category unless listed). ``string_columns`` are read as text, never as numbers.
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise SchemaError(f"{path}: the file is empty")
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            table = pq.read_table(path)
        else:
            read_opts = pacsv.ReadOptions(column_names=list(column_names) if column_names else None, block_size=1 << 24)
            convert = pacsv.ConvertOptions(
                null_values=list(null_values),
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                column_types={c: pa.string() for c in string_columns},
            )
            table = pacsv.read_csv(
                path,
                read_options=read_opts,
                parse_options=pacsv.ParseOptions(delimiter=separator),
                convert_options=convert,
            )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise SchemaError(
            f"{path}: could not read the file as {'Parquet' if 'parquet' in name else 'CSV'}: {exc}"
        ) from exc
    if table.num_rows == 0:
        raise SchemaError(f"{path}: the file has no data rows")
    if skip_initial_space:
        table = strip_strings(table)
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SchemaError(f"{path}: missing column(s) {missing}; the file has {table.column_names[:50]}")
        table = table.select(list(columns))
    return table


def strip_strings(table: pa.Table) -> pa.Table:
    """Strip leading and trailing blanks of every string column (pyarrow has no ``skipinitialspace``)."""
    import pyarrow.compute as pc

    cols = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.utf8_trim_whitespace(col)
        cols.append(col)
    return pa.table(cols, names=table.column_names)
