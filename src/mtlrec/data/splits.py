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


SPLIT_NAMES = ("train", "valid", "test")
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 values: a fast, well-mixed hash (vectorised)."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_from_hash(h: np.ndarray) -> np.ndarray:
    """uint64 hashes to floats uniform in [0, 1) (the top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def assign_by_uniform(u: np.ndarray, valid: float, test: float) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) from uniforms: test below ``test``, valid in the next ``valid``."""
    return np.where(u < test, 2, np.where(u < test + valid, 1, 0)).astype(np.int8)


def row_uniforms(first_row: int, n: int, seed: int) -> np.ndarray:
    """A uniform number per row from (seed, global row index): the same rows get the same numbers however the
    rows were batched, so a streamed random split is reproducible."""
    idx = np.arange(first_row, first_row + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = idx ^ splitmix64(np.array([seed & _MASK64], dtype=np.uint64))[0]
    return uniform_from_hash(splitmix64(key))


def key_uniforms(hashes: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number per key hash (e.g. a user id), mixed with the seed: equal keys get equal numbers."""
    with np.errstate(over="ignore"):
        key = hashes.astype(np.uint64) ^ splitmix64(np.array([(seed + 1) & _MASK64], dtype=np.uint64))[0]
    return uniform_from_hash(splitmix64(key))
