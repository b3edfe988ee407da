"""Command-line options and timing shared by the peer scripts (run inside the peers venv, never mtlrec's)."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps-per-run", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["train", "predict"], default="train", help="predict: time predict() instead")
    return p.parse_args()


def row_slices(rows: int, batch_size: int, steps: int, count: int) -> list[np.ndarray]:
    """``count`` consecutive windows of ``steps * batch_size`` row indices, wrapping around the data."""
    n = steps * batch_size
    return [np.arange(i * n, (i + 1) * n) % rows for i in range(count)]


def time_epochs(train_on: Callable[[np.ndarray], None], args: argparse.Namespace) -> list[float]:
    """samples/s of ``args.runs`` calls of ``train_on(rows)`` (one call = one pass of the peer's own training loop
    over ``steps_per_run`` batches), after one warm-up call over ``warmup`` batches."""
    warm = row_slices(args.rows, args.batch_size, max(1, args.warmup), 1)[0]
    train_on(warm)
    windows = row_slices(args.rows, args.batch_size, args.steps_per_run, args.runs + 1)[1:]
    out = []
    for idx in windows:
        t0 = time.perf_counter()
        train_on(idx)
        out.append(len(idx) / (time.perf_counter() - t0))
    return out


def report(system: str, version: str, runs: list[float], **extra) -> None:
    """Print the result row as the last stdout line (JSON) for benchmarks/throughput.py."""
    row = {
        "system": system,
        "version": version,
        "samples_per_s": round(statistics.median(runs), 1),
        "samples_per_s_runs": [round(r, 1) for r in runs],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        **extra,
    }
    print(json.dumps(row), flush=True)
