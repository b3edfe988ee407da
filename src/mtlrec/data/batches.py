"""Batches sliced out of columnar arrays by index blocks: no per-sample ``__getitem__``, no collate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
    """

    def __init__(
        self, data: EncodedData, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def num_batches(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    def order(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        order = self.order(epoch)
        n, bs = len(self.data), self.batch_size
        for b in range(start_batch, self.num_batches()):
            lo, hi = b * bs, min(n, (b + 1) * bs)
            if order is None:
                yield Batch.from_arrays(self.data, slice(lo, hi))
            else:
                idx = np.sort(order[lo:hi])  # sorted gathers are friendlier to memory-mapped pages
                yield Batch.from_arrays(self.data, idx)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
