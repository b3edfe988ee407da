"""Fit preprocessing on the training split and encode any split into columnar numpy arrays.

Every step works on whole columns (pyarrow compute and numpy); there is no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.layout import FeatureLayout, MultiField
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
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    if pa.types.is_dictionary(col.type):
        return pc.cast(col, pa.string())
    return pc.cast(col, pa.string())


def _column(table: pa.Table, name: str, source: str, role: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SchemaError(f"{source}: missing column {name!r} ({role}); columns present: {table.column_names[:60]}")
    return table.column(name)


def _to_float(col: pa.ChunkedArray, name: str, source: str, role: str) -> np.ndarray:
    try:
        arr = pc.cast(col, pa.float64()) if not pa.types.is_floating(col.type) else col
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{source}: column {name!r} ({role}) must be numeric: {exc}") from exc
    return (
        arr.to_numpy().astype(np.float64, copy=False)
        if arr.null_count == 0
        else np.asarray(pc.fill_null(arr, np.nan).to_numpy(), dtype=np.float64)
    )


def hash_strings(values: pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Deterministic FNV-1a-style hash of every string into ``[1, buckets]``, vectorised over rows."""
    strings = _as_string(values).to_numpy(zero_copy_only=False)
    raw = np.asarray(strings.astype(str), dtype="S")
    width = raw.dtype.itemsize
    mat = raw.view(np.uint8).reshape(len(raw), width).astype(np.uint64)
    h = np.full(len(raw), 1469598103934665603, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    with np.errstate(over="ignore"):
        for j in range(width):  # loop over character positions, not rows
            c = mat[:, j]
            nz = c != 0
            h = np.where(nz, (h ^ c) * prime, h)
    return (h % np.uint64(buckets)).astype(np.int64) + 1


@dataclass
class Preprocessor:
    """Vocabularies and statistics fitted on the training split; applied unchanged to validation and test."""

    schema: Schema
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    numeric_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    fitted: bool = False

    # ---- fit ----------------------------------------------------------------------------------------------
    def fit(self, table: pa.Table, source: str = "<train>") -> Preprocessor:
        for f in self.schema.features:
            col = _column(table, f.source, source, f"feature {f.name}")
            if isinstance(f, CategoricalFeature):
                if f.hash_buckets is None:
                    self.vocabularies[f.name] = self._fit_vocab(_as_string(col), f.min_count)
            elif isinstance(f, MultiValuedFeature):
                items = pc.list_flatten(pc.split_pattern(_as_string(col), f.separator))
                self.vocabularies[f.name] = self._fit_vocab(items, f.min_count)
            else:
                self.numeric_stats[f.name] = self._fit_numeric(
                    f, _to_float(col, f.source, source, f"feature {f.name}"), source
                )
        self.fitted = True
        return self

    @staticmethod
    def _fit_vocab(values: pa.ChunkedArray | pa.Array, min_count: int) -> list[str]:
        counts = pc.value_counts(values.drop_null() if hasattr(values, "drop_null") else values)
        vals = counts.field("values")
        cnt = counts.field("counts").to_numpy()
        keep = pc.filter(vals, pa.array(cnt >= min_count))
        return sorted(v for v in keep.to_pylist() if v is not None and v != "")

    @staticmethod
    def _fit_numeric(f: NumericFeature, x: np.ndarray, source: str) -> dict[str, Any]:
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            raise SchemaError(f"{source}: column {f.source!r} (numeric feature {f.name}) has no finite values")
        stats: dict[str, Any] = {"fill": float(finite.mean())}
        if f.transform == "log":
            stats["shift"] = float(finite.min())
            finite = np.log1p(finite - stats["shift"])
        if f.transform == "quantile":
            qs = np.quantile(finite, np.linspace(0, 1, f.n_buckets + 1)[1:-1])
            stats["boundaries"] = np.unique(qs).tolist()
        else:
            stats["mean"] = float(finite.mean())
            std = float(finite.std())
            stats["std"] = std if std > 0 else 1.0
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

    def transform(self, table: pa.Table, source: str = "<data>", *, labels: bool = True) -> EncodedData:
        """Encode a table. ``labels=False`` encodes features only (for scoring unlabeled data): label and mask
        columns are then zeros and ones."""
        self._check_fitted()
        n = table.num_rows
        cat_cols: list[np.ndarray] = []
        num_cols: list[np.ndarray] = []
        multi: dict[str, np.ndarray] = {}
        for f in self.schema.features:
            col = _column(table, f.source, source, f"feature {f.name}")
            if isinstance(f, CategoricalFeature):
                if f.hash_buckets:
                    cat_cols.append(hash_strings(col, f.hash_buckets))
                else:
                    cat_cols.append(self._lookup(_as_string(col), self.vocabularies[f.name]))
            elif isinstance(f, MultiValuedFeature):
                multi[f.name] = self._encode_lists(_as_string(col), f, n)
            else:
                x = _to_float(col, f.source, source, f"feature {f.name}")
                missing = ~np.isfinite(x)
                if missing.all() and n > 0:
                    raise SchemaError(f"{source}: column {f.source!r} (numeric feature {f.name}) is all missing")
                st = self.numeric_stats[f.name]
                if f.transform == "quantile":
                    b = np.searchsorted(np.asarray(st["boundaries"]), x, side="right") + 1
                    cat_cols.append(np.where(missing, 0, b).astype(np.int64))
                else:
                    x = np.where(missing, st["fill"], x)
                    if f.transform == "log":
                        x = np.log1p(np.maximum(x - st["shift"], 0.0))
                    if f.transform != "none":
                        x = (x - st["mean"]) / st["std"]
                    num_cols.append(x.astype(np.float32))
                if f.missing_indicator:
                    num_cols.append(missing.astype(np.float32))
        if labels:
            label_arr, masks = self._encode_labels(table, source)
        else:
            label_arr = np.zeros((n, len(self.schema.tasks)), np.float32)
            masks = np.ones_like(label_arr)
        return EncodedData(
            cat=np.stack(cat_cols, 1) if cat_cols else np.zeros((n, 0), np.int64),
            num=np.stack(num_cols, 1) if num_cols else np.zeros((n, 0), np.float32),
            multi=multi,
            labels=label_arr,
            masks=masks,
            layout=self.layout(),
            task_names=self.schema.task_names,
        )

    def _encode_labels(self, table: pa.Table, source: str) -> tuple[np.ndarray, np.ndarray]:
        n = table.num_rows
        labels = np.zeros((n, len(self.schema.tasks)), np.float32)
        masks = np.ones((n, len(self.schema.tasks)), np.float32)
        for j, t in enumerate(self.schema.tasks):
            y = _to_float(
                _column(table, t.label_column, source, f"label of task {t.name}"),
                t.label_column,
                source,
                f"label of task {t.name}",
            )
            if t.mask:
                m = _to_float(
                    _column(table, t.mask, source, f"sample-space mask of task {t.name}"),
                    t.mask,
                    source,
                    f"mask of task {t.name}",
                )
                masks[:, j] = (m == 1).astype(np.float32)
            in_space = masks[:, j] > 0
            if np.isnan(y[in_space]).any():
                bad = int(np.isnan(y[in_space]).sum())
                raise SchemaError(f"{source}: label column {t.label_column!r} (task {t.name}) has {bad} missing values")
            if t.type == "binary":
                vals = np.unique(y[in_space])
                wrong = vals[(vals != 0) & (vals != 1)]
                if wrong.size:
                    raise SchemaError(
                        f"{source}: label column {t.label_column!r} of binary task {t.name!r} must be 0 or 1; "
                        f"found {wrong[:5].tolist()}"
                    )
            labels[:, j] = np.nan_to_num(y, nan=0.0)
        return labels, masks

    @staticmethod
    def _lookup(values: pa.ChunkedArray | pa.Array, vocab: list[str]) -> np.ndarray:
        idx = pc.index_in(values, value_set=pa.array(vocab, pa.string()))
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    def _encode_lists(self, col: pa.ChunkedArray, f: MultiValuedFeature, n: int) -> np.ndarray:
        lists = pc.split_pattern(pc.fill_null(col, ""), f.separator).combine_chunks()
        offsets = lists.offsets.to_numpy()
        flat = self._lookup(lists.values, self.vocabularies[f.name])
        lengths = np.diff(offsets)
        pos = np.arange(len(flat)) - np.repeat(offsets[:-1] - offsets[0], lengths)
        rows = np.repeat(np.arange(n), lengths)
        keep = pos < f.max_len
        out = np.zeros((n, f.max_len), np.int64)
        out[rows[keep], pos[keep]] = flat[keep]
        return out

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("Preprocessor.fit must run on the training split before transform")

    # ---- persistence --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(), "vocabularies": self.vocabularies, "numeric_stats": self.numeric_stats}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        return cls(Schema.from_dict(state["schema"]), state["vocabularies"], state["numeric_stats"], fitted=True)
