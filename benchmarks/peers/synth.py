"""The standard synthetic throughput data, shared by mtlrec's benchmark and the peer scripts (numpy only).

26 categorical fields with vocabularies from 10 to 100,000 (log-spaced from 10 upwards, capped at 100,000:
about 1.06M ids in all), ids drawn with a Zipf-like skew (``id = floor(v * u^3)``: a heavy head, a long tail),
13 standard-normal numeric fields, 2 binary labels that depend on a few features (so losses move). Index 0 is
kept free (mtlrec's OOV id) so every system sees exactly the same values ``1..vocab``.
"""

from __future__ import annotations

import numpy as np

NUM_CAT = 26
NUM_NUM = 13
NUM_TASKS = 2
MAX_VOCAB = 100_000


def vocab_sizes(num_fields: int = NUM_CAT) -> list[int]:
    """Vocabulary sizes (ids ``1..v``; tables need ``v + 1`` rows with the OOV row 0)."""
    exps = 1.0 + 6.0 * np.arange(num_fields) / max(1, num_fields - 1)
    return [int(min(MAX_VOCAB, round(10**e))) for e in exps]


def make_arrays(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"cat": (N, 26) int64 in 1..v, "num": (N, 13) float32, "labels": (N, 2) float32}``, fast and seeded."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(vocab_sizes(), dtype=np.float64)
    u = rng.random((rows, NUM_CAT))
    cat = (np.floor(sizes * u**3).astype(np.int64) % sizes.astype(np.int64)) + 1
    num = rng.standard_normal((rows, NUM_NUM), dtype=np.float32)
    # labels: a fixed random score of a few features plus noise, thresholded near the 25% / 10% quantiles
    score1 = num[:, 0] + 0.5 * num[:, 1] - 0.7 * ((cat[:, 3] % 7) == 0) + rng.standard_normal(rows, dtype=np.float32)
    score2 = 0.6 * score1 + num[:, 2] + 0.8 * ((cat[:, 10] % 5) == 1) + rng.standard_normal(rows, dtype=np.float32)
    labels = np.stack([score1 > 0.67, score2 > 1.6], 1).astype(np.float32)
    return {"cat": cat, "num": num, "labels": labels}
