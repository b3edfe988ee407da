"""Batches sliced out of columnar arrays by index blocks: no per-sample ``__getitem__``, no collate."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from mtlrec.data.preprocess import EncodedData


@dataclass
class Batch:
    cat: torch.Tensor  # (B, F_cat) int64
    num: torch.Tensor  # (B, F_num) float32
    multi: dict[str, torch.Tensor]  # name -> (B, L) int64
    labels: torch.Tensor  # (B, T) float32
    masks: torch.Tensor  # (B, T) float32

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.cat.to(device),
            self.num.to(device),
            {k: v.to(device) for k, v in self.multi.items()},
            self.labels.to(device),
            self.masks.to(device),
        )

    @classmethod
    def from_arrays(cls, data: EncodedData, idx: np.ndarray | slice) -> Batch:
        def t(a: np.ndarray) -> torch.Tensor:
            # a contiguous slice of a read-only memory map is a read-only view; torch needs writable memory
            return torch.from_numpy(a if a.flags.writeable else a.copy())

        return cls(
            t(np.ascontiguousarray(data.cat[idx], dtype=np.int64)),
            t(np.ascontiguousarray(data.num[idx], dtype=np.float32)),
            {k: t(np.ascontiguousarray(v[idx], dtype=np.int64)) for k, v in data.multi.items()},
            t(np.ascontiguousarray(data.labels[idx], dtype=np.float32)),
            t(np.ascontiguousarray(data.masks[idx], dtype=np.float32)),
        )


class BatchIterator:
    """Iterates one epoch of a split in batches.

    With ``shuffle``, the order is a permutation drawn from ``seed`` and the epoch number, so any epoch can be
    replayed exactly; ``start_batch`` skips the first batches (used to resume mid-epoch). Without shuffle, batches
    are contiguous slices (zero-copy on memory-mapped arrays until the dtype cast).

    Block shuffle (``block`` rows, default ``data.shuffle_block``; 0 = off): the split is cut into blocks of
    contiguous rows, the blocks are permuted, and the rows of each window of ``window_blocks`` consecutive
    (permuted) blocks are shuffled among themselves. A batch then reads from at most a few windows of long
    contiguous runs (friendly to caches on slow disks), and the order needs memory for one window, not a
    permutation of every row.
    """

    def __init__(
        self,
        data: EncodedData,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        block: int | None = None,
        window_blocks: int = 16,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.block = int(getattr(data, "shuffle_block", 0) if block is None else block)
        self.window_blocks = max(1, int(window_blocks))

    def num_batches(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    def order(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        if self.block > 0:
            return np.concatenate(list(self._windows(epoch))) if len(self.data) else np.zeros(0, np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

    def _block_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 1]).permutation(-(-len(self.data) // self.block))

    def _windows(self, epoch: int, first: int = 0) -> Iterator[np.ndarray]:
        """The block-shuffled order, one window of rows at a time, from window ``first``."""
        n, b, w = len(self.data), self.block, self.window_blocks
        blocks = self._block_order(epoch)
        for k in range(first, -(-len(blocks) // w)):
            starts = blocks[k * w : (k + 1) * w] * b
            rows = np.concatenate([np.arange(s, min(s + b, n)) for s in starts])
            yield np.random.default_rng([self.seed, epoch, 2, k]).permutation(rows)

    def _block_batches(self, epoch: int, start_batch: int) -> Iterator[np.ndarray]:
        n, b, w, bs = len(self.data), self.block, self.window_blocks, self.batch_size
        blocks = self._block_order(epoch)
        n_blocks = len(blocks)
        sizes = np.minimum(blocks * b + b, n) - blocks * b
        win_sizes = np.add.reduceat(sizes, np.arange(0, n_blocks, w)) if n_blocks else np.zeros(0, np.int64)
        ends = np.cumsum(win_sizes)
        pos = start_batch * bs
        k = int(np.searchsorted(ends, pos, side="right"))
        windows = self._windows(epoch, k)
        buf = np.zeros(0, np.int64)
        skip = pos - (int(ends[k - 1]) if k else 0)  # rows of window k before the first batch
        for bi in range(start_batch, self.num_batches()):
            want = min(bs, n - bi * bs)
            while len(buf) < skip + want:
                buf = np.concatenate([buf, next(windows)])
            yield buf[skip : skip + want]
            buf, skip = buf[skip + want :], 0

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        n, bs = len(self.data), self.batch_size
        if self.shuffle and self.block > 0:
            windows = WindowReader(self.data, self.block, self._block_order(epoch), self.window_blocks)
            try:
                for idx in self._block_batches(epoch, start_batch):
                    yield Batch.from_arrays(windows.gather(np.sort(idx)), slice(None))
            finally:
                windows.close()
            return
        order = self.order(epoch)
        for b in range(start_batch, self.num_batches()):
            lo, hi = b * bs, min(n, (b + 1) * bs)
            if order is None:
                yield Batch.from_arrays(self.data, slice(lo, hi))
            else:
                idx = np.sort(order[lo:hi])  # sorted gathers are friendlier to memory-mapped pages
                yield Batch.from_arrays(self.data, idx)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


def _mapped_file(a: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset) of an array that is a whole C-ordered memory map of a file, else None."""
    if isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.filename and a.flags.c_contiguous:
        return str(a.filename), int(a.offset)
    return None


class WindowReader:
    """The rows of a block-shuffle window, read from the cache files with ``pread`` into buffers of the process.

    Gathering shuffled rows straight from a memory map makes every touched page (a whole large page-cache folio
    on current kernels) part of the process's resident memory, so the RSS grows to the size of the cache during
    an epoch. Reading a window's blocks (long contiguous runs) with ``os.preadv`` keeps the resident memory to
    two windows, whatever the cache size; arrays that are not memory maps are gathered in place."""

    def __init__(self, data: EncodedData, block: int, blocks: np.ndarray, window_blocks: int) -> None:
        self.data, self.block, self.blocks, self.w = data, block, blocks, window_blocks
        self.window_of_block = np.empty(len(blocks), np.int64)
        self.window_of_block[blocks] = np.arange(len(blocks)) // window_blocks
        self.fields = {"cat": data.cat, "num": data.num, "labels": data.labels, "masks": data.masks}
        self.fields.update({f"multi__{k}": v for k, v in data.multi.items()})
        self.files = {k: _mapped_file(a) for k, a in self.fields.items()}
        self.fds: dict[str, int] = {}
        self.loaded: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if k not in self.loaded:
            n, b = len(self.data), self.block
            starts = np.sort(self.blocks[k * self.w : (k + 1) * self.w]) * b
            stops = np.minimum(starts + b, n)
            first = np.concatenate([[0], np.cumsum(stops - starts)[:-1]])
            bufs = {name: self._read(name, a, starts, stops) for name, a in self.fields.items()}
            if len(self.loaded) >= 2:  # a batch spans at most two consecutive windows
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[k] = (starts, first, bufs)
        return self.loaded[k]

    def _read(self, name: str, a: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        where = self.files[name]
        if where is None:
            return np.concatenate([a[s:e] for s, e in zip(starts, stops, strict=True)])
        out = np.empty((int((stops - starts).sum()), *a.shape[1:]), a.dtype)
        row = out.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
        fd = self.fds.get(name)
        if fd is None:
            fd = self.fds[name] = os.open(where[0], os.O_RDONLY)
        view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
        at = 0
        for s, e in zip(starts.tolist(), stops.tolist(), strict=True):  # one read per block, not per row
            want = (e - s) * row
            got = os.preadv(fd, [view[at : at + want]], where[1] + s * row)
            if got != want:
                raise OSError(f"{where[0]}: short read ({got} of {want} bytes at row {s}); is the cache truncated?")
            at += want
        return out

    def gather(self, idx: np.ndarray) -> EncodedData:
        """The rows ``idx`` (in this order) as a small in-memory :class:`EncodedData`."""
        win = self.window_of_block[idx // self.block]
        out = {name: np.empty((len(idx), *a.shape[1:]), a.dtype) for name, a in self.fields.items()}
        for k in np.unique(win).tolist():
            sel = win == k
            starts, first, bufs = self._load(k)
            rows = idx[sel]
            j = np.searchsorted(starts, rows, side="right") - 1
            local = first[j] + (rows - starts[j])
            for name, buf in bufs.items():
                out[name][sel] = buf[local]
        multi = {k[len("multi__") :]: v for k, v in out.items() if k.startswith("multi__")}
        return replace(self.data, cat=out["cat"], num=out["num"], labels=out["labels"], masks=out["masks"], multi=multi)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.loaded.clear()
