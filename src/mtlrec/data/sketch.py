"""Numeric statistics fitted batch by batch in bounded memory.

:class:`NumericAccumulator` keeps, per column:

- the count, mean and sum of squared deviations merged exactly over batches (Chan et al.'s pairwise update), the
  minimum and the maximum: the ``standardize`` statistics and the fill value never need the rows again;
- the finite values themselves while there are at most ``cap`` of them (default 2^20 per column, 8 MiB). Below
  the cap every statistic is computed from all values exactly as a fit on the whole table does, so a streamed fit
  of a small data set is identical to the in-memory one;
- above the cap, a uniform reservoir sample of ``cap`` values (Vitter's algorithm R, vectorised per batch, seeded):
  the ``quantile`` bucket edges and the mean/std of ``log`` values are estimated from it. With 2^20 values the
  standard error of a quantile edge is below 0.1 percentile point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_CAP = 1 << 20


class NumericAccumulator:
    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0) -> None:
        self.cap = cap
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.rows = 0
        self.kept: list[np.ndarray] = []
        self.sample: np.ndarray | None = None
        self.rng = np.random.default_rng([seed, 0x5EED])

    @property
    def exact(self) -> bool:
        return self.sample is None

    def add(self, x: np.ndarray) -> None:
        """Add a batch (float64, NaN = missing; infinities must have been rejected by the caller)."""
        self.rows += len(x)
        v = x[np.isfinite(x)]
        m = len(v)
        if m == 0:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            bmean = float(v.mean())
            bm2 = float(((v - bmean) ** 2).sum())
            n = self.n + m
            delta = bmean - self.mean
            self.mean += delta * m / n
            self.m2 += bm2 + delta * delta * self.n * m / n
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        seen = self.n
        self.n = n
        if self.sample is None:
            if seen + m <= self.cap:
                self.kept.append(np.array(v, dtype=np.float64))
                return
            allv = np.concatenate([*self.kept, v])
            self.kept = []
            self.sample = allv[: self.cap].copy()
            rest, seen = allv[self.cap :], self.cap
        else:
            rest = v
        if len(rest):
            i = seen + np.arange(len(rest), dtype=np.float64)
            j = np.floor(self.rng.random(len(rest)) * (i + 1)).astype(np.int64)
            sel = j < self.cap
            self.sample[j[sel]] = rest[sel]  # a repeated slot keeps the later value, as the sequential algorithm

    def values(self) -> np.ndarray:
        """All finite values (exact) or the reservoir sample."""
        if self.sample is not None:
            return self.sample
        return np.concatenate(self.kept) if self.kept else np.zeros(0)

    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


def numeric_stats(transform: str, n_buckets: int, acc: NumericAccumulator) -> dict[str, Any]:
    """The statistics a numeric feature is encoded with (``fill``, ``mean``/``std``, ``shift``, ``boundaries``).

    Exact (all values kept): computed from the values as numpy computes them on a whole column. Otherwise: the
    fill, mean, std and shift come from the exact running moments, quantile edges and log moments from the
    reservoir sample."""
    finite = acc.values()
    with np.errstate(over="ignore", invalid="ignore"):
        stats: dict[str, Any] = {"fill": float(finite.mean()) if acc.exact else acc.mean}
        if transform == "log":
            stats["shift"] = float(finite.min()) if acc.exact else acc.min
            finite = np.log1p(finite - stats["shift"])
        if transform == "quantile":
            qs = np.quantile(finite, np.linspace(0, 1, n_buckets + 1)[1:-1])
            stats["boundaries"] = np.unique(qs).tolist()
        else:
            if acc.exact or transform == "log":
                stats["mean"] = float(finite.mean())
                std = float(finite.std())
            else:
                stats["mean"], std = acc.mean, acc.std()
            stats["std"] = std if std > 0 else 1.0
    return stats
