"""Streaming preprocessing: raw CSV/Parquet shards to a memory-mapped cache in bounded memory.

Inputs are a file, a list of files, a glob or a directory of CSV (any separator, ``.gz``) or Parquet shards. Each
file is read in record batches (``pyarrow.parquet.ParquetFile.iter_batches`` / ``pyarrow.csv.open_csv``: ordered
streaming readers, so every row has a stable global index); the whole table is never in memory.

- **pass 0** (time split only) reads the time column and computes the cut points (quantiles of a bounded sample,
  exact below 2^20 rows: :mod:`mtlrec.data.sketch`);
- **pass 1** assigns every row to a split and fits the preprocessing on the training rows only
  (:meth:`~mtlrec.data.preprocess.Preprocessor.partial_fit`); it also counts the rows of every split;
- **pass 2** encodes batch by batch into columns pre-allocated as ``.npy`` memory maps (categorical ids in the
  narrowest integer type that holds them, int32 below 2^31) inside a temporary folder that is renamed into place
  at the end (:class:`~mtlrec.data.store.CacheWriter`).

Splits (``split:``): a list of three fractions or ``{by: random, valid: 0.1, test: 0.1, seed: 0}`` (each row by a
hash of the seed and its global row index), ``{by: time, column: ts, valid: 0.1, test: 0.1}`` (the latest rows are
test, the next latest valid) or ``{by: user, column: user_id, ...}`` (a hash of the user value and the seed: all
rows of a user land in one split). Hash splits have the requested fractions in expectation (binomial noise), not
exactly. Given ``valid``/``test`` files are used as they are; a missing one is carved out of the training files.
"""

from __future__ import annotations

import glob as globlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.data.preprocess import EncodedData, Preprocessor, _to_float
from mtlrec.data.sketch import NumericAccumulator
from mtlrec.data.splits import SPLIT_NAMES, assign_by_uniform, key_uniforms, row_uniforms, splitmix64
from mtlrec.data.store import CacheWriter, ColumnFile, cache_key, file_fingerprint, has_cache, load_splits
from mtlrec.data.vocab import as_string, fnv1a64, is_integer_type
from mtlrec.errors import did_you_mean
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, Schema, SchemaError

FORMAT_VERSION = "stream-1"
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
BATCH_ROWS = 1 << 18
Inputs = str | Path | Sequence[str | Path]  # a file, a list of files, a glob or a folder
Progress = Callable[[str, int, int | None], None]  # (phase, rows done, total rows or None)


_HOOKS: ContextVar[dict[str, Any] | None] = ContextVar("mtlrec_stream_hooks", default=None)


@contextmanager
def stream_hooks(*, progress: Progress | None = None, rebuild: bool = False) -> Iterator[None]:
    """Within the block, every streamed preparation (whichever data set reader calls it) reports to
    ``progress`` and, with ``rebuild``, ignores an existing cache (``mtlrec prepare --force``)."""
    token = _HOOKS.set({"progress": progress, "rebuild": rebuild})
    try:
        yield
    finally:
        _HOOKS.reset(token)


# ---- inputs ---------------------------------------------------------------------------------------------------
def _is_data_file(p: Path) -> bool:
    name = p.name.lower().removesuffix(".gz")
    return p.is_file() and name.endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)


def expand_inputs(spec: str | Path | Sequence[str | Path], what: str = "train") -> list[Path]:
    """Files of an input: a file, a list, a glob (``data/part-*.parquet``) or a directory (every CSV/Parquet file
    in it, recursively, in sorted order)."""
    items = [spec] if isinstance(spec, str | Path) else list(spec)
    if not items:
        raise SchemaError(f"{what}: no input files given")
    out: list[Path] = []
    for item in items:
        s = str(item)
        if any(ch in s for ch in "*?["):
            found = sorted(Path(p) for p in globlib.glob(s, recursive=True) if _is_data_file(Path(p)))
            if not found:
                raise SchemaError(f"{what}: the pattern {s!r} matches no CSV or Parquet file")
            out += found
        elif Path(s).is_dir():
            found = sorted(p for p in Path(s).rglob("*") if _is_data_file(p))
            if not found:
                raise SchemaError(f"{what}: the folder {s} holds no CSV or Parquet file")
            out += found
        elif not Path(s).exists():
            raise SchemaError(f"{what}: {s}: file not found")
        else:
            out.append(Path(s))
    return out


@dataclass
class ReadOptions:
    """How raw files are read. ``separator`` (CSV), ``column_names`` (for files without a header row),
    ``null_values`` (strings read as missing; everything else, "NA" included, is a value), ``encoding`` (of CSV
    text, default UTF-8), ``skip_initial_space`` (strip blanks around string values), ``batch_rows``, ``max_rows`` (read only the
    first rows of each file: a quick look at a large file)."""

    separator: str = ","
    column_names: list[str] | None = None
    null_values: list[str] = field(default_factory=lambda: [""])
    encoding: str = "utf-8"
    skip_initial_space: bool = False
    batch_rows: int = BATCH_ROWS
    max_rows: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ReadOptions:
        d = dict(d or {})
        allowed = [f for f in cls.__dataclass_fields__]
        for k in d:
            if k not in allowed:
                raise SchemaError(f"read options: unknown key {k!r}{did_you_mean(k, allowed)}; expected {allowed}")
        opts = cls(**d)
        if not isinstance(opts.separator, str) or len(opts.separator) != 1:
            raise SchemaError(f"read options.separator: expected one character, got {opts.separator!r}")
        if opts.max_rows is not None and (not isinstance(opts.max_rows, int) or opts.max_rows < 1):
            raise SchemaError(f"read options.max_rows: expected a positive integer, got {opts.max_rows!r}")
        return opts


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


class FileReader:
    """One CSV or Parquet file read in ordered record batches of the needed columns. Categorical columns of a
    CSV file are read as text (so ids beyond int64 or float precision stay distinct values)."""

    def __init__(self, path: Path, opts: ReadOptions, string_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.opts = opts
        self.string_columns = list(string_columns)
        if not self.path.exists():
            raise SchemaError(f"{self.path}: file not found")
        if self.path.stat().st_size == 0:
            raise SchemaError(f"{self.path}: the file is empty")
        name = self.path.name.lower().removesuffix(".gz")
        self.parquet = name.endswith(PARQUET_SUFFIXES)
        self._names: list[str] | None = None

    @property
    def kind(self) -> str:
        return "Parquet" if self.parquet else "CSV"

    def _csv(self, include: Sequence[str] | None, string_columns: Sequence[str], binary: Sequence[str] = ()):
        o = self.opts
        read = pacsv.ReadOptions(
            column_names=list(o.column_names) if o.column_names else None,
            block_size=1 << 22,
            encoding=o.encoding,
        )
        types = {c: pa.string() for c in string_columns}
        types.update({c: pa.binary() for c in binary})
        convert = pacsv.ConvertOptions(
            null_values=list(o.null_values),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            column_types=types,
            include_columns=list(include) if include is not None else None,
        )
        return pacsv.open_csv(
            self.path,
            read_options=read,
            parse_options=pacsv.ParseOptions(delimiter=o.separator),
            convert_options=convert,
        )

    def names(self) -> list[str]:
        if self._names is None:
            try:
                if self.parquet:
                    names = pq.ParquetFile(self.path).schema_arrow.names
                else:
                    names = self._csv(None, []).schema.names
            except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
                raise SchemaError(f"{self.path}: could not read the file as {self.kind}: {_first_line(exc)}") from None
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise SchemaError(
                    f"{self.path}: duplicated column names {dup} in the header; every column needs a unique name"
                )
            self._names = names
        return self._names

    def batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(data rows before the batch, batch) for the given columns, in file order."""
        names = self.names()
        missing = [c for c in columns if c not in names]
        if missing:
            c = missing[0]
            raise SchemaError(f"{self.path}: missing column {c!r}{did_you_mean(c, names)}; the file has {names[:50]}")
        strings = [c for c in self.string_columns if c in columns]
        offset = 0
        try:
            if self.parquet:
                it: Any = pq.ParquetFile(self.path).iter_batches(batch_size=self.opts.batch_rows, columns=list(columns))
            else:
                it = self._csv(list(columns), strings)
            limit = self.opts.max_rows
            for batch in it:
                if limit is not None and offset + batch.num_rows > limit:
                    batch = batch.slice(0, limit - offset)
                if self.opts.skip_initial_space:
                    batch = _strip_strings(batch)
                yield offset, batch
                offset += batch.num_rows
                if limit is not None and offset >= limit:
                    break
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            msg = _first_line(exc)
            if "invalid UTF8" in msg or isinstance(exc, UnicodeDecodeError):
                raise SchemaError(self._locate_bad_utf8(list(columns), strings, msg)) from None
            raise SchemaError(
                f"{self.path}: could not read the file as {self.kind} (after data row {offset}): {msg}"
            ) from None
        if offset == 0:
            raise SchemaError(f"{self.path}: the file has no data rows")

    def _locate_bad_utf8(self, columns: list[str], strings: list[str], msg: str) -> str:
        """Find the first row and column holding bytes that are not UTF-8 (the error path only: the columns are
        reread as bytes and each batch validated by bisection)."""
        text_cols = [c for c in columns if c in strings] or columns
        offset = 0
        try:
            for batch in self._csv(columns, [], binary=text_cols):
                for c in text_cols:
                    col = batch.column(c)
                    if _valid_utf8(col):
                        continue
                    lo, hi = 0, len(col)
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        lo, hi = (lo, mid) if not _valid_utf8(col.slice(lo, mid - lo)) else (mid, hi)
                    return (
                        f"{self.path}: data row {offset + lo + 1}, column {c!r}: bytes that are not valid "
                        f"{self.opts.encoding}; declare the file's encoding (read option encoding: latin-1, ...)"
                    )
                offset += batch.num_rows
        except (pa.ArrowInvalid, OSError):
            pass
        return f"{self.path}: text that is not valid {self.opts.encoding} ({msg}); declare the file's encoding"


def prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Items of ``it`` produced by a background thread ``depth`` ahead (reading the next batch overlaps encoding
    this one: pyarrow releases the GIL); an exception in the producer is raised in the consumer."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put((None, x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, end))
        except BaseException as exc:  # handed to the consumer
            q.put((exc, None))

    t = threading.Thread(target=produce, daemon=True, name="mtlrec-prefetch")
    t.start()
    try:
        while True:
            exc, x = q.get()
            if exc is not None:
                raise exc
            if x is end:
                return
            yield x
    finally:
        stop.set()


def _valid_utf8(col: pa.Array) -> bool:
    try:
        pc.cast(col, pa.string())
        return True
    except pa.ArrowInvalid:
        return False


def _strip_strings(batch: pa.RecordBatch) -> pa.RecordBatch:
    cols = [pc.utf8_trim_whitespace(c) if pa.types.is_string(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


# ---- splits ---------------------------------------------------------------------------------------------------
@dataclass
class SplitSpec:
    """How rows of the training input are assigned to train/valid/test (see the module docstring)."""

    by: str = "random"
    column: str | None = None
    valid: float = 0.1
    test: float = 0.1
    seed: int = 0

    @classmethod
    def parse(cls, split: Any, split_seed: int = 0) -> SplitSpec:
        if split is None:
            return cls(seed=split_seed)
        if isinstance(split, list | tuple):
            fr = [float(x) for x in split]
            if len(fr) != 3 or any(x < 0 for x in fr) or sum(fr) <= 0:
                raise SchemaError(f"split: expected three non-negative fractions train, valid, test; got {list(split)}")
            tot = sum(fr)
            return cls(valid=fr[1] / tot, test=fr[2] / tot, seed=split_seed)
        if not isinstance(split, dict):
            raise SchemaError(f"split: expected a list of three fractions or a mapping with 'by'; got {split!r}")
        allowed = ["by", "column", "valid", "test", "seed"]
        for k in split:
            if k not in allowed:
                raise SchemaError(
                    f"split: unknown key {k!r}{did_you_mean(str(k), allowed)}; expected one of: {', '.join(allowed)}"
                )
        spec = cls(**{"seed": split_seed, **split})
        if spec.by not in ("random", "time", "user"):
            raise SchemaError(
                f"split.by: unknown value {spec.by!r}{did_you_mean(str(spec.by), ['random', 'time', 'user'])}; "
                "expected one of: random, time, user"
            )
        if spec.by != "random" and not spec.column:
            raise SchemaError(
                f"split.column: a split by {spec.by} needs the column ({'ts' if spec.by == 'time' else 'user_id'}, ...)"
            )
        for k in ("valid", "test"):
            v = getattr(spec, k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise SchemaError(f"split.{k}: expected a fraction in [0, 1), got {v!r}")
        if spec.valid + spec.test >= 1:
            raise SchemaError(f"split: valid + test must be below 1, got {spec.valid} + {spec.test}")
        return spec


def _time_values(col: pa.Array, path: Path, name: str, offset: int) -> np.ndarray:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        col = pc.cast(pc.cast(col, pa.timestamp("s")) if pa.types.is_date(col.type) else col, pa.int64())
    elif pa.types.is_string(col.type):
        try:
            col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        except pa.ArrowInvalid:
            pass
    x = _to_float(pa.chunked_array([col]), name, str(path), "time split column", offset)
    if np.isnan(x).any():
        i = int(np.flatnonzero(np.isnan(x))[0])
        raise SchemaError(f"{path}: data row {offset + i + 1}, column {name!r} (time split column): missing time value")
    return x


class SplitAssigner:
    """Split codes (0 train, 1 valid, 2 test) of a batch, the same in every pass."""

    def __init__(self, spec: SplitSpec, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
        self.spec = spec
        # a carve-out (train + test files, valid from train): only the codes in ``allowed`` are produced
        self.valid = spec.valid if 1 in allowed else 0.0
        self.test = spec.test if 2 in allowed else 0.0
        if 1 in allowed and 2 not in allowed:  # a test file is given: valid is carved out of the rest
            self.valid = spec.valid / (1 - spec.test)
        if 2 in allowed and 1 not in allowed:
            self.test = spec.test / (1 - spec.valid)
        self.cuts: tuple[float, float] | None = None

    @property
    def column(self) -> str | None:
        return self.spec.column if self.spec.by in ("time", "user") else None

    def fit_time(self, acc: NumericAccumulator) -> None:
        vals = acc.values()
        if len(vals) == 0:
            raise SchemaError(f"split by time: column {self.spec.column!r} has no values")
        qs = np.quantile(vals, [1 - self.test - self.valid, 1 - self.test])
        self.cuts = (float(qs[0]), float(qs[1]))

    def codes(self, batch: pa.RecordBatch, first_row: int, path: Path, offset: int) -> np.ndarray:
        n = batch.num_rows
        if self.spec.by == "random":
            return assign_by_uniform(row_uniforms(first_row, n, self.spec.seed), self.valid, self.test)
        col = batch.column(self.spec.column)
        if self.spec.by == "user":
            if is_integer_type(col.type):
                h = splitmix64(pc.fill_null(pc.cast(col, pa.int64()), 0).to_numpy().view(np.uint64))
            else:
                h = fnv1a64(col)
            return assign_by_uniform(key_uniforms(h, self.spec.seed), self.valid, self.test)
        t = _time_values(col, path, self.spec.column, offset)
        lo, hi = self.cuts
        codes = np.zeros(n, np.int8)
        if self.valid > 0:
            codes[t > lo] = 1
        if self.test > 0:
            codes[t > hi] = 2
        return codes


# ---- the pipeline ---------------------------------------------------------------------------------------------
def _int_dtype(max_id: int) -> np.dtype:
    for dt in (np.int16, np.int32):
        if max_id < np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _columns_needed(schema: Schema, extra: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(schema.source_columns() + [c for c in extra if c]))


def _string_columns(schema: Schema) -> list[str]:
    return [f.source for f in schema.features if isinstance(f, CategoricalFeature | MultiValuedFeature)]


def _as_table(batch: pa.RecordBatch, transform: Callable[[pa.Table], pa.Table] | None) -> pa.Table | pa.RecordBatch:
    if transform is None:
        return batch
    table = transform(pa.Table.from_batches([batch]))
    if table.num_rows != batch.num_rows:
        raise RuntimeError(f"a streaming transform must keep every row ({batch.num_rows} in, {table.num_rows} out)")
    return table


@dataclass
class _Group:
    """Input files that feed splits: the training files (codes from the assigner) or a given valid/test file."""

    files: list[Path]
    split: int | None  # None: the assigner decides
    readers: list[FileReader] = field(default_factory=list)


def prepare_stream(
    schema: Schema,
    train: Inputs,
    valid: Inputs | None = None,
    test: Inputs | None = None,
    *,
    name: str = "files",
    split: Any = None,
    split_seed: int = 0,
    read_options: dict[str, Any] | None = None,
    transform: Callable[[pa.Table], pa.Table] | None = None,
    string_columns: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any], bool]:
    """Stream the inputs into a cache folder; returns (folder, manifest, whether it was already cached).

    CSV columns of the schema's categorical features are read as text, and so are ``string_columns`` (raw
    columns that a ``transform`` turns into features). With ``use_cache=False`` the folder is a fresh temporary
    one (the caller removes it once loaded)."""
    from mtlrec.data.bundle import default_cache_dir

    hooks = _HOOKS.get() or {}
    progress = progress or hooks.get("progress")
    opts = ReadOptions.from_dict(read_options)
    spec = SplitSpec.parse(split, split_seed)
    given = {"train": expand_inputs(train, "train")}
    for k, v in (("valid", valid), ("test", test)):
        if v is not None:
            given[k] = expand_inputs(v, k)
    allowed = tuple(i for i, k in enumerate(SPLIT_NAMES) if k not in given or k == "train")
    assigner = SplitAssigner(spec, allowed)
    split_desc = {
        "method": asdict(spec) if len(allowed) > 1 else "given files",
        "files": {k: [str(p) for p in v] for k, v in given.items()},
    }
    key = cache_key(
        FORMAT_VERSION,
        name,
        schema.to_dict(),
        split_desc,
        asdict(opts),
        {k: [file_fingerprint(p) for p in v] for k, v in given.items()},
        getattr(transform, "__qualname__", None),
        sorted(string_columns),
    )
    base = Path(cache_dir or default_cache_dir())
    root = base / f"{name}-{key}"
    if use_cache and has_cache(root) and not hooks.get("rebuild"):
        return root, load_splits(root)[1], True
    if not use_cache:
        base.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{name}-nocache.", dir=base)) / "data"

    strings = sorted(set(_string_columns(schema)) | set(string_columns))
    groups = [_Group(given["train"], None)] + [
        _Group(given[k], i) for i, k in enumerate(SPLIT_NAMES) if k in given and k != "train"
    ]
    for g in groups:
        g.readers = [FileReader(p, opts, strings) for p in g.files]
    raw_cols = None if transform else _columns_needed(schema, [assigner.column or ""])

    def columns_of(r: FileReader) -> list[str]:
        # with a transform, every raw column is read (the transform derives the schema's columns from them)
        return raw_cols if raw_cols is not None else r.names()

    t0 = time.perf_counter()
    # pass 0: time cut points
    if spec.by == "time" and len(allowed) > 1:
        acc = NumericAccumulator(seed=spec.seed)
        for r in groups[0].readers:
            for off, b in r.batches([spec.column]):
                acc.add(_time_values(b.column(spec.column), r.path, spec.column, off))
        assigner.fit_time(acc)

    # pass 1: split codes, rows per split, fit on training rows
    pre = Preprocessor(schema)
    counts = np.zeros(3, np.int64)
    in_space = np.zeros(len(schema.tasks), np.int64)
    done = 0
    total_known = _known_rows(groups)
    for g in groups:
        first_row = 0
        for r in g.readers:
            for off, b in prefetch(r.batches(columns_of(r))):
                if g.split is None:
                    codes = assigner.codes(b, first_row, r.path, off)
                    counts += np.bincount(codes, minlength=3)
                    train_rows = codes == 0
                    if train_rows.any():
                        table = _as_table(b, transform)
                        rows = None if train_rows.all() else train_rows
                        pre.partial_fit(table, str(r.path), off, rows=rows)
                        _, masks = pre._encode_labels(table, str(r.path), off)  # labels checked before pass 2
                        in_space += (masks[train_rows] > 0).sum(0)
                else:
                    counts[g.split] += b.num_rows
                first_row += b.num_rows
                done += b.num_rows
                if progress:
                    progress("fit", done, total_known)
    if counts[0] == 0:
        raise SchemaError(f"{given['train'][0]}: no row falls into the training split")
    for i, k in enumerate(SPLIT_NAMES):
        if counts[i] == 0:
            raise SchemaError(
                f"{given['train'][0]}: the {k} split is empty ({int(counts.sum())} rows, split {asdict(spec)}); "
                "give more rows, other fractions or a file for it"
            )
    for j, t in enumerate(schema.tasks):
        if in_space[j] == 0:
            raise SchemaError(
                f"{given['train'][0]}: task {t.name!r}: its mask column {t.mask!r} selects no training row "
                "(mask == 1 nowhere); check the column or drop the mask"
            )
    pre.finish()
    layout = pre.layout()
    fit_s = time.perf_counter() - t0

    # pass 2: encode into memory maps
    total = int(counts.sum())
    writer = CacheWriter(root)
    try:
        cat_max = max([v for _, v in layout.categorical], default=1)
        id_dtype = _int_dtype(max([cat_max] + [m.vocab_size for m in layout.multi_valued]))
        cols: dict[int, dict[str, ColumnFile]] = {}
        n_cat, n_num, n_task = len(layout.categorical), len(layout.numeric), len(schema.tasks)
        # 0/1 labels of binary tasks fit a byte (zero outside a task's sample space, where no loss or metric reads
        # them); a regression task keeps float32 for all
        binary = all(t.type == "binary" for t in schema.tasks)
        label_dtype = np.uint8 if binary else np.float32
        label_sums = np.zeros((3, 2, n_task))  # per split: rows in each task's space, label sum over it
        for i, k in enumerate(SPLIT_NAMES):
            n = int(counts[i])
            c = {
                "cat": writer.column(k, "cat", (n, n_cat), _int_dtype(cat_max)),
                "num": writer.column(k, "num", (n, n_num), np.float32),
                "labels": writer.column(k, "labels", (n, n_task), label_dtype),
                "masks": writer.column(k, "masks", (n, n_task), np.uint8),  # 0/1: a byte, cast per batch too
            }
            for m in layout.multi_valued:
                c[f"multi__{m.name}"] = writer.column(k, f"multi__{m.name}", (n, m.max_len), _int_dtype(m.vocab_size))
            cols[i] = c
        pos = np.zeros(3, np.int64)
        writes = _Writes()
        oov = {i: dict.fromkeys(pre.vocabularies, 0) for i in range(3)}
        items = {i: dict.fromkeys(pre.vocabularies, 0) for i in range(3)}
        done = 0
        for g in groups:
            first_row = 0
            for r in g.readers:
                for off, b in prefetch(r.batches(columns_of(r))):
                    codes = (
                        assigner.codes(b, first_row, r.path, off)
                        if g.split is None
                        else np.full(b.num_rows, g.split, np.int8)
                    )
                    table = _as_table(b, transform)
                    whole = pre.transform(table, source=str(r.path), row_offset=off, id_dtype=id_dtype)
                    for s in np.unique(codes):
                        sel = codes == s
                        enc = whole if sel.all() else whole.take(sel)
                        if binary:
                            enc.labels = np.where(enc.masks > 0, enc.labels, 0).astype(np.float32)
                        writes.put(cols[s], enc, pos[s])
                        label_sums[s, 0] += enc.masks.sum(0, dtype=np.float64)
                        label_sums[s, 1] += (enc.labels * enc.masks).sum(0, dtype=np.float64)
                        pos[s] += len(enc)
                        if s:  # OOV rates are reported for valid and test
                            _count_oov(oov[s], items[s], pre, enc, schema, table, sel)
                    first_row += b.num_rows
                    done += b.num_rows
                    if progress:
                        progress("encode", done, total)
        writes.close()
        if not (pos == counts).all():
            raise RuntimeError(f"pass 2 wrote {pos.tolist()} rows, pass 1 counted {counts.tolist()}")
        summary = _summary(pre, schema, label_sums, counts, oov, items)
        meta = {
            "split": split_desc,
            "rows": {k: int(counts[i]) for i, k in enumerate(SPLIT_NAMES)},
            "streamed": True,
            "summary": summary,
            "seconds": {"fit": round(fit_s, 3), "total": round(time.perf_counter() - t0, 3)},
        }
        manifest = {
            "splits": list(SPLIT_NAMES),
            "layout": layout.to_dict(),
            "task_names": schema.task_names,
            "multi": [m.name for m in layout.multi_valued],
            "meta": meta,
            "preprocessor": pre.state_dict(),
        }
        writer.commit(manifest)
    except BaseException:
        if "writes" in locals():
            writes.close(abort=True)
        writer.abort()
        if not use_cache:
            shutil.rmtree(root.parent, ignore_errors=True)
        raise
    return root, manifest, False


def _write(c: dict[str, ColumnFile], enc: EncodedData, at: int) -> None:
    c["cat"].write_rows(at, enc.cat)
    c["num"].write_rows(at, enc.num)
    c["labels"].write_rows(at, enc.labels)
    c["masks"].write_rows(at, enc.masks)
    for k, v in enc.multi.items():
        c[f"multi__{k}"].write_rows(at, v)


class _Writes:
    """A background thread that writes encoded row blocks (``os.pwrite`` releases the GIL, so writing overlaps
    encoding the next batch); at most ``depth`` blocks wait, which bounds the memory."""

    def __init__(self, depth: int = 2) -> None:
        self.q: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True, name="mtlrec-writer")
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    _write(*item)
                except BaseException as exc:  # raised in the encoding thread by put/close
                    self.error = exc

    def put(self, c: dict[str, ColumnFile], enc: EncodedData, at: int) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((c, enc, int(at)))

    def close(self, abort: bool = False) -> None:
        if abort:
            self.error = self.error or RuntimeError("aborted")
        self.q.put(None)
        self.t.join()
        if self.error is not None and not abort:
            raise self.error


def _count_oov(
    oov: dict[str, int],
    items: dict[str, int],
    pre: Preprocessor,
    enc: EncodedData,
    schema: Schema,
    table: pa.Table,
    sel: np.ndarray,
) -> None:
    """Add one split's rows of a batch to the OOV counts: categorical fields per row (id 0, missing included),
    multi-valued fields per list item (their lists encoded again, for valid/test rows only)."""
    j = 0
    for f in schema.features:
        if isinstance(f, CategoricalFeature):
            if f.name in oov:
                oov[f.name] += int(len(enc) - np.count_nonzero(enc.cat[:, j]))
                items[f.name] += len(enc)
            j += 1
        elif isinstance(f, MultiValuedFeature):
            col = as_string(table.column(f.source).filter(pa.array(sel)))
            flat = pc.list_flatten(pc.split_pattern(pc.fill_null(col, ""), f.separator))
            items[f.name] += len(flat) - int(pc.sum(pc.equal(flat, "")).as_py() or 0)
            oov[f.name] += pre._encode_lists(col, f, len(col))[1]
        elif f.transform == "quantile":
            j += 1


def _known_rows(groups: list[_Group]) -> int | None:
    """Total rows when every input is Parquet (from the file metadata), else None (CSV: unknown until read)."""
    total = 0
    for g in groups:
        for r in g.readers:
            if not r.parquet:
                return None
            total += pq.ParquetFile(r.path).metadata.num_rows
    return total


def _summary(
    pre: Preprocessor,
    schema: Schema,
    label_sums: np.ndarray,
    counts: np.ndarray,
    oov: dict[int, dict[str, int]],
    items: dict[int, dict[str, int]],
) -> dict[str, Any]:
    """Rows per split, vocabulary sizes with their OOV rate on valid/test, label rate per task over its sample
    space (and the sample space's share of the rows), per split."""
    vocab = {
        name: {
            "size": len(v) + 1,
            **{
                f"oov_{SPLIT_NAMES[i]}": round(oov[i][name] / items[i][name], 6) if items[i][name] else None
                for i in (1, 2)
            },
        }
        for name, v in pre.vocabularies.items()
    }
    tasks: dict[str, Any] = {}
    for j, t in enumerate(schema.tasks):
        per: dict[str, Any] = {}
        for i, k in enumerate(SPLIT_NAMES):
            space, pos_sum = label_sums[i, 0, j], label_sums[i, 1, j]
            per[k] = {
                "rows_in_space": int(space),
                "space_share": round(space / counts[i], 6) if counts[i] else None,
                ("positive_rate" if t.type == "binary" else "mean"): round(pos_sum / space, 6) if space else None,
            }
        tasks[t.name] = {"mask": t.mask, **per}
    return {"rows": {k: int(counts[i]) for i, k in enumerate(SPLIT_NAMES)}, "vocabularies": vocab, "tasks": tasks}


def load_stream(
    schema: Schema,
    train: Inputs,
    valid: Inputs | None = None,
    test: Inputs | None = None,
    *,
    name: str = "files",
    shuffle: str | None = None,
    shuffle_block: int = 4096,
    progress: Progress | None = None,
    **kwargs: Any,
):
    """:func:`prepare_stream` then the splits as memory maps in a :class:`~mtlrec.data.bundle.DataBundle`.

    ``shuffle: block`` makes the training batches shuffle blocks of ``shuffle_block`` contiguous rows (then rows
    inside a window of blocks) instead of single rows: fewer, larger reads for caches on slow disks."""
    from mtlrec.data.bundle import DataBundle

    if shuffle not in (None, "rows", "block"):
        raise SchemaError(f"shuffle: unknown value {shuffle!r}; expected one of: rows, block")
    if shuffle == "block" and (not isinstance(shuffle_block, int) or shuffle_block < 1):
        raise SchemaError(f"shuffle_block: expected a positive integer, got {shuffle_block!r}")
    root, manifest, _ = prepare_stream(schema, train, valid, test, name=name, progress=progress, **kwargs)
    splits, manifest = load_splits(root)
    if not kwargs.get("use_cache", True):
        shutil.rmtree(root.parent, ignore_errors=True)  # the memory maps stay valid until released
    if shuffle == "block":
        splits["train"].shuffle_block = shuffle_block
    meta = dict(manifest.get("meta", {}))
    meta["cache"] = str(root) if kwargs.get("use_cache", True) else None
    return DataBundle(name, splits, schema, meta, manifest.get("preprocessor"))


def cache_size(root: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(root).rglob("*") if p.is_file())
