"""Fit preprocessing on the training split and encode any split into columnar numpy arrays.

Every step works on whole columns (pyarrow compute and numpy); there is no per-row Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.layout import FeatureLayout, MultiField
from mtlrec.data.sketch import NumericAccumulator, numeric_stats
from mtlrec.data.vocab import VocabCounter, VocabLookup, as_string, fnv1a64
from mtlrec.schema import (
    CategoricalFeature,
    MultiValuedFeature,
    NumericFeature,
    Schema,
    SchemaError,
)


@dataclass
class EncodedData:
    """Encoded columns of one split: everything a :class:`~mtlrec.data.batches.BatchIterator` slices."""

    cat: np.ndarray  # (N, F_cat) int64, 0 = OOV
    num: np.ndarray  # (N, F_num) float32
    multi: dict[str, np.ndarray]  # name -> (N, L) int64, 0 = padding
    labels: np.ndarray  # (N, T) float32
    masks: np.ndarray  # (N, T) float32, 1 where the row is in the task's sample space
    layout: FeatureLayout
    task_names: list[str]
    oov: dict[str, int] = field(default_factory=dict)  # per vocabulary field: values encoded as OOV (transform)
    shuffle_block: int = 0  # > 0: shuffle blocks of this many contiguous rows (see BatchIterator)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: np.ndarray) -> EncodedData:
        return EncodedData(
            cat=self.cat[idx],
            num=self.num[idx],
            multi={k: v[idx] for k, v in self.multi.items()},
            labels=self.labels[idx],
            masks=self.masks[idx],
            layout=self.layout,
            task_names=self.task_names,
        )


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return as_string(col)


def _column(table: pa.Table | pa.RecordBatch, name: str, source: str, role: str) -> pa.ChunkedArray | pa.Array:
    idx = table.schema.get_field_index(name)
    if idx < 0:
        raise SchemaError(f"{source}: missing column {name!r} ({role}); columns present: {table.column_names[:60]}")
    col = table.column(idx)
    if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1:
        return col.chunk(0)
    return col


def _row(row_offset: int, idx: int) -> str:
    return f"data row {row_offset + idx + 1}"


def _to_float(
    col: pa.ChunkedArray, name: str, source: str, role: str, row_offset: int = 0, *, finite: bool = True
) -> np.ndarray:
    """float64 values, NaN where missing. ``finite``: an infinite value is refused, naming its row."""
    try:
        arr = pc.cast(col, pa.float64()) if not pa.types.is_floating(col.type) else col
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"{source}: column {name!r} ({role}) must be numeric: {str(exc).splitlines()[0][:200]}"
        ) from None
    x = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls become NaN
    if finite:
        bad = np.isinf(x)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(
                f"{source}: {_row(row_offset, i)}, column {name!r} ({role}): value {x[i]} is not finite; "
                "numeric inputs must be finite numbers or empty (missing)"
            )
    return x


PARALLEL_MIN_ROWS = 1 << 15
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own


def data_threads() -> int:
    """Threads that encode fields in parallel (``MTLREC_DATA_THREADS``, default the CPU count, at most 4)."""
    env = os.environ.get("MTLREC_DATA_THREADS")
    return max(1, int(env)) if env else max(1, min(4, os.cpu_count() or 1))


def _map_fields(fn: Callable[[Any], Any], items: list[Any], n_rows: int) -> list[Any]:
    """``fn`` over the fields, in worker threads for large batches (pyarrow compute and most numpy kernels
    release the GIL); results in field order, and the first failing field (in schema order) raises."""
    global _POOL
    threads = data_threads()
    if threads == 1 or n_rows < PARALLEL_MIN_ROWS or len(items) < 2:
        return [fn(x) for x in items]
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="mtlrec-data"))
    futures = [_POOL[1].submit(fn, x) for x in items]
    return [fu.result() for fu in futures]


def _stack(cols: list[np.ndarray], n: int, dtype: Any) -> np.ndarray:
    out = np.empty((n, len(cols)), dtype)
    for j, c in enumerate(cols):
        out[:, j] = c
    return out


def hash_strings(values: pa.ChunkedArray, buckets: int) -> np.ndarray:
    """FNV-1a 64 of every value's text into ``[1, buckets]`` (a null hashes as the text ``None``; the export
    contract's ``HASH_SPEC``), vectorised over the distinct values."""
    return (fnv1a64(values, null_text="None") % np.uint64(buckets)).astype(np.int64) + 1


@dataclass
class Preprocessor:
    """Vocabularies and statistics fitted on the training split; applied unchanged to validation and test.

    ``fit(table)`` fits on one table; ``partial_fit(batch)`` ... ``finish()`` fits the same statistics batch by
    batch in bounded memory (:mod:`mtlrec.data.vocab`, :mod:`mtlrec.data.sketch`); both give identical results
    on data below the sketch cap. ``vocab_types`` records the type each vocabulary was fitted on (``int`` or
    ``string``): values of another type at encoding time are cast to it."""

    schema: Schema
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    numeric_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    fitted: bool = False
    vocab_types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._counters: dict[str, VocabCounter] = {}
        self._numeric: dict[str, NumericAccumulator] = {}
        self._lookups: dict[str, VocabLookup] = {}
        self._fit_source = "<train>"

    # ---- fit ----------------------------------------------------------------------------------------------
    def fit(self, table: pa.Table, source: str = "<train>") -> Preprocessor:
        return self.partial_fit(table, source).finish()

    def partial_fit(
        self,
        table: pa.Table | pa.RecordBatch,
        source: str = "<train>",
        row_offset: int = 0,
        rows: np.ndarray | None = None,
    ) -> Preprocessor:
        """Add one batch of training rows to the counts and statistics (call :meth:`finish` after the last).
        ``rows``: a boolean mask of the batch's training rows (default: all)."""
        self._fit_source = source
        keep = None if rows is None else pa.array(rows)
        for f in self.schema.features:
            _column(table, f.source, source, f"feature {f.name}")
            if isinstance(f, NumericFeature):
                self._numeric.setdefault(f.name, NumericAccumulator())
            elif not (isinstance(f, CategoricalFeature) and f.hash_buckets is not None):
                self._counters.setdefault(f.name, VocabCounter())

        def add(f: Any) -> None:
            col = _column(table, f.source, source, f"feature {f.name}")
            if isinstance(f, CategoricalFeature):
                if f.hash_buckets is None:
                    self._counters[f.name].add(col, rows)
            elif isinstance(f, MultiValuedFeature):
                col = col if keep is None else col.filter(keep)
                self._counters[f.name].add(pc.list_flatten(pc.split_pattern(_as_string(col), f.separator)))
            else:
                x = _to_float(col, f.source, source, f"feature {f.name}", row_offset)
                self._numeric[f.name].add(x if rows is None else x[rows])

        _map_fields(add, self.schema.features, table.num_rows)
        return self

    def finish(self) -> Preprocessor:
        source = self._fit_source
        for f in self.schema.features:
            if isinstance(f, CategoricalFeature | MultiValuedFeature):
                if isinstance(f, CategoricalFeature) and f.hash_buckets is not None:
                    continue
                vocab, kind = self._counters.get(f.name, VocabCounter()).finish(f.min_count)
                self.vocabularies[f.name] = vocab.to_numpy(zero_copy_only=False).tolist()
                self.vocab_types[f.name] = kind if isinstance(f, CategoricalFeature) else "string"
                self._lookups[f.name] = VocabLookup(vocab, self.vocab_types[f.name])
            else:
                self.numeric_stats[f.name] = self._fit_numeric(
                    f, self._numeric.get(f.name, NumericAccumulator()), source
                )
        self._counters, self._numeric = {}, {}
        self.fitted = True
        return self

    @staticmethod
    def _fit_numeric(f: NumericFeature, acc: NumericAccumulator, source: str) -> dict[str, Any]:
        if acc.n == 0:
            raise SchemaError(f"{source}: column {f.source!r} (numeric feature {f.name}) has no finite values")
        stats = numeric_stats(f.transform, f.n_buckets, acc)
        if f.transform == "quantile" and not np.isfinite(stats["fill"]):  # unused by buckets; keep it finite
            stats["fill"] = float(np.median(acc.values()))
        bad = [k for k in ("fill", "mean", "std") if k in stats and not np.isfinite(stats[k])]
        if bad:
            big = acc.max if abs(acc.max) >= abs(acc.min) else acc.min
            raise SchemaError(
                f"{source}: column {f.source!r} (numeric feature {f.name}): values as large as {big:.3g} overflow "
                f"its {bad[0]}; rescale the column or use transform: quantile"
            )
        return stats

    # ---- transform ----------------------------------------------------------------------------------------
    def layout(self) -> FeatureLayout:
        self._check_fitted()
        cats: list[tuple[str, int]] = []
        for f in self.schema.features:
            if isinstance(f, CategoricalFeature):
                size = (f.hash_buckets + 1) if f.hash_buckets else len(self.vocabularies[f.name]) + 1
                cats.append((f.name, size))
            elif isinstance(f, NumericFeature) and f.transform == "quantile":
                cats.append((f.name, len(self.numeric_stats[f.name]["boundaries"]) + 2))
        multi = tuple(
            MultiField(f.name, len(self.vocabularies[f.name]) + 1, f.max_len, f.pooling)
            for f in self.schema.multi_valued
        )
        nums: list[str] = []
        for f in self.schema.numeric:
            if f.transform != "quantile":
                nums.append(f.name)
            if f.missing_indicator:
                nums.append(f"{f.name}__missing")
        return FeatureLayout(tuple(cats), multi, tuple(nums), tuple(self.schema.task_names))

    def lookup(self, name: str) -> VocabLookup:
        if name not in self._lookups:
            self._lookups[name] = VocabLookup(self.vocabularies[name], self.vocab_types.get(name, "string"))
        return self._lookups[name]

    def transform(
        self,
        table: pa.Table | pa.RecordBatch,
        source: str = "<data>",
        *,
        labels: bool = True,
        row_offset: int = 0,
        id_dtype: Any = np.int64,
    ) -> EncodedData:
        """Encode a table (or one record batch of a stream). ``labels=False`` encodes features only (for scoring
        unlabeled data): label and mask columns are then zeros and ones. ``row_offset``: the number of data rows
        before this batch in its file, so an error names the row. The result's ``oov`` counts, per vocabulary
        field, the rows (or list items) that mapped to the out-of-vocabulary id 0, missing values included.
        ``id_dtype``: the integer type of the categorical and multi-valued ids (the streaming cache uses the
        narrowest that holds them)."""
        self._check_fitted()
        n = table.num_rows
        cat_cols: list[np.ndarray] = []
        num_cols: list[np.ndarray] = []
        multi: dict[str, np.ndarray] = {}
        oov: dict[str, int] = {}
        for f in self.schema.features:  # missing columns first, in schema order
            _column(table, f.source, source, f"feature {f.name}")
        if any(isinstance(f, CategoricalFeature | MultiValuedFeature) for f in self.schema.features):
            for f in self.schema.features:
                if isinstance(f, MultiValuedFeature) or (isinstance(f, CategoricalFeature) and not f.hash_buckets):
                    self.lookup(f.name)  # built once, before the worker threads share it

        def encode(f: Any) -> tuple[Any, ...]:
            col = _column(table, f.source, source, f"feature {f.name}")
            if isinstance(f, CategoricalFeature):
                if f.hash_buckets:
                    return ("cat", hash_strings(col, f.hash_buckets), None)
                ids = self.lookup(f.name).encode(col)
                return ("cat", ids, int(n - np.count_nonzero(ids)))
            if isinstance(f, MultiValuedFeature):
                return ("multi", *self._encode_lists(_as_string(col), f, n, id_dtype))
            return ("num", *self._encode_numeric(f, col, source, row_offset))

        for f, out in zip(self.schema.features, _map_fields(encode, self.schema.features, n), strict=True):
            if out[0] == "cat":
                cat_cols.append(out[1])
                if out[2] is not None:
                    oov[f.name] = out[2]
            elif out[0] == "multi":
                multi[f.name], oov[f.name] = out[1], out[2]
            else:
                if out[1] is not None:
                    cat_cols.append(out[1])
                num_cols.extend(out[2])
        if labels:
            label_arr, masks = self._encode_labels(table, source, row_offset)
        else:
            label_arr = np.zeros((n, len(self.schema.tasks)), np.float32)
            masks = np.ones_like(label_arr)
        return EncodedData(
            cat=_stack(cat_cols, n, id_dtype),
            num=np.stack(num_cols, 1) if num_cols else np.zeros((n, 0), np.float32),
            multi=multi,
            labels=label_arr,
            masks=masks,
            layout=self.layout(),
            task_names=self.schema.task_names,
            oov=oov,
        )

    def _encode_numeric(
        self, f: NumericFeature, col: Any, source: str, row_offset: int
    ) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """(bucket ids or None, numeric inputs) of one numeric feature."""
        x = _to_float(col, f.source, source, f"feature {f.name}", row_offset)
        missing = np.isnan(x)  # a column missing in every row is filled as training fills it
        st = self.numeric_stats[f.name]
        bucket, nums = None, []
        if f.transform == "quantile":
            b = np.searchsorted(np.asarray(st["boundaries"]), x, side="right") + 1
            bucket = np.where(missing, 0, b)
        else:
            x = np.where(missing, st["fill"], x)
            if f.transform == "log":
                x = np.log1p(np.maximum(x - st["shift"], 0.0))
            if f.transform != "none":
                x = (x - st["mean"]) / st["std"]
            nums.append(x.astype(np.float32))
        if f.missing_indicator:
            nums.append(missing.astype(np.float32))
        return bucket, nums

    def _encode_labels(
        self, table: pa.Table | pa.RecordBatch, source: str, row_offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        n = table.num_rows
        labels = np.zeros((n, len(self.schema.tasks)), np.float32)
        masks = np.ones((n, len(self.schema.tasks)), np.float32)
        for j, t in enumerate(self.schema.tasks):
            role = f"label of task {t.name}"
            y = _to_float(_column(table, t.label_column, source, role), t.label_column, source, role, row_offset)
            if t.mask:
                role = f"sample-space mask of task {t.name}"
                m = _to_float(_column(table, t.mask, source, role), t.mask, source, role, row_offset)
                masks[:, j] = (m == 1).astype(np.float32)
            in_space = masks[:, j] > 0
            if np.isnan(y[in_space]).any():
                bad = np.flatnonzero(np.isnan(y) & in_space)
                raise SchemaError(
                    f"{source}: label column {t.label_column!r} (task {t.name}) has {len(bad)} missing values "
                    f"(first at {_row(row_offset, int(bad[0]))})"
                )
            if t.type == "binary":
                wrong = in_space & (y != 0) & (y != 1)
                if wrong.any():
                    i = int(np.flatnonzero(wrong)[0])
                    raise SchemaError(
                        f"{source}: label column {t.label_column!r} of binary task {t.name!r} must be 0 or 1; "
                        f"found {np.unique(y[wrong])[:5].tolist()} (first at {_row(row_offset, i)})"
                    )
            labels[:, j] = np.nan_to_num(y, nan=0.0)
        return labels, masks

    def _encode_lists(
        self, col: pa.ChunkedArray, f: MultiValuedFeature, n: int, id_dtype: Any = np.int64
    ) -> tuple[np.ndarray, int]:
        lists = pc.split_pattern(pc.fill_null(col, ""), f.separator)
        lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        offsets = lists.offsets.to_numpy()
        items = lists.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        flat = self.lookup(f.name).encode(items)
        lengths = np.diff(offsets)
        pos = np.arange(len(flat)) - np.repeat(offsets[:-1] - offsets[0], lengths)
        rows = np.repeat(np.arange(n), lengths)
        keep = pos < f.max_len
        out = np.zeros((n, f.max_len), id_dtype)
        out[rows[keep], pos[keep]] = flat[keep]
        empty = pc.equal(items, "").to_numpy(zero_copy_only=False) if len(items) else np.zeros(0, bool)
        return out, int(((flat == 0) & ~empty).sum())

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("Preprocessor.fit must run on the training split before transform")

    # ---- persistence --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_dict(),
            "vocabularies": self.vocabularies,
            "numeric_stats": self.numeric_stats,
            "vocab_types": self.vocab_types,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        return cls(
            Schema.from_dict(state["schema"]),
            state["vocabularies"],
            state["numeric_stats"],
            fitted=True,
            vocab_types=dict(state.get("vocab_types") or {}),
        )
