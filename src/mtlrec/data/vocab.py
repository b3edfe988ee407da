"""Categorical vocabularies fitted batch by batch, and the lookup that encodes values into ids.

A vocabulary is the sorted list (by string, as Python sorts ``str``) of the training values seen at least
``min_count`` times; id ``k`` (1-based) is the ``k``-th of them and 0 is out-of-vocabulary. The order and the ids
do not depend on how the rows were batched, so a streamed fit gives the same ids as a fit on the whole table.

Counting keeps memory bounded by the vocabulary, never by the rows:

- integer columns whose values lie in ``[0, DENSE_LIMIT)`` are counted in a dense array (``np.bincount``), the
  fastest path (a few ms per million rows);
- any other column (strings, negative or huge integers) is counted with ``pyarrow.compute.value_counts`` per batch;
  the per-batch counts are merged (a group-by sum) whenever they hold more entries than the merged table, so the
  merge work stays proportional to the vocabulary.

The vocabulary remembers the type it was fitted on (``int`` or ``string``): values of another type at encoding
time are cast to it (the strings ``"21"``/``"021"`` become the integer 21 for an integer vocabulary; integers
become their decimal string for a string vocabulary), and whatever does not match is counted as OOV.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FNV_OFFSET, FNV_PRIME = 1469598103934665603, 1099511628211  # FNV-1a 64
DENSE_LIMIT = 1 << 21  # dense counting for integer ids below this (16 MiB of int64 counts per field at most)
_INT_PATTERN = r"^\s*[+-]?[0-9]{1,18}\s*$"  # strings cast to an integer vocabulary (18 digits always fit int64)


def is_integer_type(t: pa.DataType) -> bool:
    """Integer columns get an integer vocabulary; uint64 (which may not fit int64) is treated as strings."""
    return pa.types.is_integer(t) and t != pa.uint64()


def as_string(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_string(col.type):
        return col
    return pc.cast(col, pa.string())


def _text_fnv1a64(strings: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each (non-null) string's UTF-8 bytes, zero bytes skipped, read straight from the Arrow
    buffers and hashed one character position at a time over all strings (no per-value Python)."""
    s = _combine(pc.cast(strings, pa.large_string()))
    n = len(s)
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    _, off_buf, data_buf = s.buffers()
    offs = np.frombuffer(off_buf, np.int64)[s.offset : s.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offs[:-1], np.diff(offs)
    prime = np.uint64(FNV_PRIME)
    shortest, longest = int(lengths.min()), int(lengths.max())
    with np.errstate(over="ignore"):
        for j in range(longest):
            if j < shortest:  # every string has this position: whole-array operations
                c = data[starts + j].astype(np.uint64)
                h = np.where(c != 0, (h ^ c) * prime, h)
            else:
                live = np.flatnonzero(lengths > j)
                c = data[starts[live] + j].astype(np.uint64)
                h[live] = np.where(c != 0, (h[live] ^ c) * prime, h[live])
    return h


def fnv1a64(col: pa.Array | pa.ChunkedArray, null_text: str | None = None) -> np.ndarray:
    """FNV-1a 64 of every value's text (hashed once per distinct value, then spread over the rows); a null hashes
    as ``null_text``, or is 0 when it is None."""
    enc = pc.dictionary_encode(_combine(as_string(col)))
    h = _text_fnv1a64(enc.dictionary)
    codes = enc.indices
    if codes.null_count:
        null_hash = _text_fnv1a64(pa.array([null_text]))[0] if null_text is not None else np.uint64(0)
        codes = pc.fill_null(codes, len(h))
        h = np.append(h, null_hash)
    return h[codes.to_numpy(zero_copy_only=False)]


def _combine(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


class VocabCounter:
    """Value counts of one categorical field, merged over batches (memory ~ the number of distinct values)."""

    def __init__(self) -> None:
        self.kind: str | None = None  # "int" or "string", fixed by the first non-empty batch
        self.dense: np.ndarray | None = None  # counts by value, while every integer value is in [0, DENSE_LIMIT)
        self.merged: pa.Table | None = None
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, col: pa.Array | pa.ChunkedArray, rows: np.ndarray | None = None) -> None:
        """Count the values of a batch (``rows``: a boolean mask of the rows to count; missing values skipped)."""
        col = _combine(col)
        if self.kind is None:
            if len(col) == col.null_count:
                return
            self.kind = "int" if is_integer_type(col.type) else "string"
        if self.kind == "int":
            col = cast_to_int(col)
            if col.null_count:
                col = (col if rows is None else col.filter(pa.array(rows))).drop_null()
                x = col.to_numpy()
            else:
                x = col.to_numpy() if rows is None else col.to_numpy()[rows]
            if len(x) == 0:
                return
            if self.merged is None and not self.parts:
                lo, hi = int(x.min()), int(x.max())
                if lo >= 0 and hi < DENSE_LIMIT:
                    self._add_dense(np.bincount(x, minlength=hi + 1))
                    return
                self._spill_dense()
            col = pa.array(x)
        else:
            col = as_string(col if rows is None else col.filter(pa.array(rows))).drop_null()
            if len(col) == 0:
                return
        vc = pc.value_counts(col)
        self.parts.append(pa.table({"v": vc.field("values"), "n": vc.field("counts")}))
        self.pending += len(vc)
        if self.pending > max(1 << 18, 2 * (0 if self.merged is None else self.merged.num_rows)):
            self._merge()

    def _add_dense(self, counts: np.ndarray) -> None:
        if self.dense is None:
            self.dense = counts
        elif len(counts) > len(self.dense):
            counts[: len(self.dense)] += self.dense
            self.dense = counts
        else:
            self.dense[: len(counts)] += counts

    def _spill_dense(self) -> None:
        if self.dense is not None:
            nz = np.flatnonzero(self.dense)
            self.parts.append(pa.table({"v": pa.array(nz.astype(np.int64)), "n": pa.array(self.dense[nz])}))
            self.pending += len(nz)
            self.dense = None

    def _merge(self) -> None:
        tables = ([self.merged] if self.merged is not None else []) + self.parts
        if not tables:
            return
        t = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        if len(tables) > 1:
            t = t.group_by("v").aggregate([("n", "sum")]).rename_columns(["v", "n"])
        self.merged, self.parts, self.pending = t, [], 0

    def finish(self, min_count: int) -> tuple[pa.Array, str]:
        """The vocabulary (string array, sorted) and the type it was fitted on."""
        if self.dense is not None:
            values = np.flatnonzero(self.dense >= min_count)
            keep = pa.array(values.astype(np.int64))
        else:
            self._merge()
            if self.merged is None:
                return pa.array([], pa.string()), self.kind or "string"
            n = self.merged.column("n").to_numpy()
            keep = pc.filter(self.merged.column("v"), pa.array(n >= min_count)).combine_chunks()
        strings = as_string(keep)
        strings = pc.filter(strings, pc.not_equal(strings, ""))
        strings = strings.take(pc.sort_indices(strings))
        return strings, self.kind or "string"


def cast_to_int(col: pa.Array) -> pa.Array:
    """Values of any type as int64 for an integer vocabulary; what is not an integer becomes null (OOV)."""
    if col.type == pa.int64():
        return col
    if is_integer_type(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(col.type):
        whole = pc.and_(pc.equal(pc.floor(col), col), pc.less(pc.abs(col), 2.0**62))
        return pc.cast(pc.if_else(whole, col, None), pa.int64())
    s = as_string(col)
    ok = pc.match_substring_regex(s, _INT_PATTERN)
    return pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, s, None)), pa.int64())


class VocabLookup:
    """Encodes values into the ids of a fitted vocabulary (1-based, 0 = OOV or missing)."""

    def __init__(self, vocab: list[str] | pa.Array, kind: str = "string") -> None:
        arr = vocab if isinstance(vocab, pa.Array) else pa.array(list(vocab), pa.string())
        self.kind = kind
        self.strings = arr
        self.ints: pa.Array | None = None
        self.lut: np.ndarray | None = None
        self.hashes: tuple[np.ndarray, np.ndarray] | None = None
        if kind == "string" and len(arr):
            # a hash index built once: pyarrow's index_in would rebuild a hash set of the vocabulary per batch
            h = _text_fnv1a64(arr)
            order = np.argsort(h)
            sorted_h = h[order]
            if not (sorted_h[1:] == sorted_h[:-1]).any():  # else (a 64-bit collision in the vocabulary) index_in
                self.hashes = (sorted_h, order)
        if kind == "int":
            ints = pc.cast(arr, pa.int64()).to_numpy() if len(arr) else np.zeros(0, np.int64)
            if len(ints) and ints.min() >= 0 and ints.max() < DENSE_LIMIT:
                self.lut = np.zeros(int(ints.max()) + 1, np.int32)
                self.lut[ints] = np.arange(1, len(ints) + 1, dtype=np.int32)
            else:
                self.ints = pa.array(ints)

    def __len__(self) -> int:
        return len(self.strings)

    def encode(self, col: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int32 ids of every value (0 for OOV and missing)."""
        col = _combine(col)
        if self.kind == "int":
            x = cast_to_int(col)
            if self.lut is not None:
                v = x.fill_null(-1).to_numpy() if x.null_count else x.to_numpy()
                inside = (v >= 0) & (v < len(self.lut))
                out = np.zeros(len(v), np.int32)
                out[inside] = self.lut[v[inside]]
                return out
            return _index_in(x, self.ints)
        if self.hashes is not None:
            return self._hashed(as_string(col))
        return _index_in(as_string(col), self.strings)

    def _hashed(self, values: pa.Array) -> np.ndarray:
        if len(values) == 0:
            return np.zeros(0, np.int32)
        enc = pc.dictionary_encode(values)
        sorted_h, order = self.hashes
        h = _text_fnv1a64(enc.dictionary)
        at = np.minimum(np.searchsorted(sorted_h, h), len(sorted_h) - 1)
        cand = order[at]
        hit = sorted_h[at] == h
        # a hash match is confirmed by comparing the text, so a collision with an unseen value stays OOV
        same = pc.equal(self.strings.take(pa.array(cand)), enc.dictionary).to_numpy(zero_copy_only=False)
        ids = np.where(hit & same, cand + 1, 0).astype(np.int32)
        codes = enc.indices
        if codes.null_count:
            codes = pc.fill_null(codes, len(ids))
            ids = np.append(ids, np.int32(0))
        return ids[codes.to_numpy(zero_copy_only=False)]


def _index_in(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    if len(values) == 0:
        return np.zeros(0, np.int32)
    # encode the distinct values of the batch only, then spread them over the rows
    enc = pc.dictionary_encode(values)
    idx = pc.index_in(enc.dictionary, value_set=value_set)
    ids = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32) + 1
    codes = enc.indices
    if codes.null_count:
        codes = pc.fill_null(codes, len(ids))
        ids = np.append(ids, np.int32(0))
    return ids[codes.to_numpy(zero_copy_only=False)]
