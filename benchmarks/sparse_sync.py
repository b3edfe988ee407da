"""Relative cost of the two ways of synchronising the fused embedding table's sparse gradient over ranks.

``gather``: all-gather the touched rows and their gradients (what ``sync_gradients`` does by default);
``dense``: all-reduce the whole table's dense gradient. Both run interleaved in the same processes (gloo on CPU,
NCCL on CUDA), so the ratio holds on a loaded machine even where the absolute times do not.

    python benchmarks/sparse_sync.py --nproc 2 --rows 1000000 --dim 16 --touched 20000
"""

from __future__ import annotations

import argparse
import json
import time


def _measure(rows: int, dim: int, touched: int, reps: int) -> dict:
    import torch

    from mtlrec.train import distributed as D

    torch.set_num_threads(1)
    ctx = D.current()
    g = torch.Generator().manual_seed(ctx.rank if ctx else 0)
    idx = torch.randint(0, rows, (touched,), generator=g)
    val = torch.randn(touched, dim, generator=g)
    times = {"gather": [], "dense": []}
    for _ in range(reps):
        for mode in times:
            p = torch.nn.Parameter(torch.zeros(rows, dim))
            p.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), val, (rows, dim), check_invariants=False)
            D.barrier()
            t0 = time.perf_counter()
            D.sync_gradients([p], sparse_mode=mode)
            times[mode].append(time.perf_counter() - t0)
    return {m: sorted(v)[len(v) // 2] for m, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--touched", type=int, default=20_000, help="row ids a rank's batch looks up (with repeats)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from mtlrec.train.distributed import launch

    kw = {"rows": args.rows, "dim": args.dim, "touched": args.touched, "reps": args.reps}
    res = launch(args.nproc, _measure, kw)[0]
    res["dense_over_gather"] = res["dense"] / max(res["gather"], 1e-12)
    print(json.dumps({**kw, "nproc": args.nproc, "median_seconds": res}, indent=2))


if __name__ == "__main__":
    from common import run_script

    run_script(main)
