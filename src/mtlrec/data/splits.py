"""Seeded splits of row indices; the seed and fractions are recorded with the data."""

from __future__ import annotations

import numpy as np


def random_split(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` at random into parts of the given fractions (they must sum to 1)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(p) for p in np.split(perm, cuts)]
