"""Training and inference throughput of mtlrec models on the standard synthetic config (BENCHMARKS.md).

Config: 500,000 rows; 26 categorical fields (vocabularies 10..100,000, about 1.06M ids, Zipf-like ids), 13 numeric;
2 binary tasks; embedding 16; MMoE with 8 experts [256, 128], towers [64]; batch 2048 (inference 8192); 2 threads.
Numeric fields enter raw beside the flattened embeddings (``numeric_mode="dense"``), as in the peers' MMoE, so all
systems build the same network (input width 26·16 + 13 = 429).

Training samples/s time the full step through ``Trainer.train_step`` (forward, task losses, backward, every
optimizer step) including batch creation from the shuffled arrays; inference times ``model(batch)`` plus the
probabilities under ``no_grad`` in eval mode. Each figure is the median of several timed runs after warm-up.
bf16 (CPU autocast) is measured only where the CPU has avx512_bf16 or AMX.

``--peers`` runs torch-rechub's and DeepCTR-Torch's MMoE on the same data in their own venv (see
``benchmarks/peers/README.md``), one after the other in the same run, and reports mtlrec / peer ratios.

    python benchmarks/throughput.py [--quick] [--models mmoe,shared_bottom] [--peers] [--out FILE]
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from common import (  # noqa: E402
    ROOT,
    base_parser,
    bf16_supported,
    command_line,
    markdown_table,
    parse_models,
    peak_rss_mib,
    write_results,
)
from synth import NUM_NUM, NUM_TASKS, make_arrays, vocab_sizes  # noqa: E402

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS = {"torch_rechub": "rechub_mmoe.py", "deepctr_torch": "deepctr_mmoe.py"}

MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "mmoe": {"num_experts": 8, "expert_hidden": (256, 128)},
    "omoe": {"num_experts": 8, "expert_hidden": (256, 128)},
    "shared_bottom": {"bottom_hidden": (256, 128)},
}


def encoded_data(rows: int, seed: int = 0):
    """The synthetic arrays as mtlrec ``EncodedData`` (ids 1..v, 0 = OOV row never used)."""
    from mtlrec.data.layout import FeatureLayout
    from mtlrec.data.preprocess import EncodedData

    a = make_arrays(rows, seed)
    layout = FeatureLayout(
        categorical=tuple((f"c{i}", v + 1) for i, v in enumerate(vocab_sizes())),
        numeric=tuple(f"n{i}" for i in range(NUM_NUM)),
        task_names=tuple(f"task{j}" for j in range(NUM_TASKS)),
    )
    return EncodedData(
        cat=a["cat"],
        num=a["num"],
        multi={},
        labels=a["labels"],
        masks=np.ones_like(a["labels"]),
        layout=layout,
        task_names=list(layout.task_names),
    )


def build_model(name: str, data, numeric_mode: str):
    import torch

    from mtlrec import TaskSpec, create_model

    torch.manual_seed(0)
    tasks = [TaskSpec(t, "binary", label=t) for t in data.task_names]
    params = dict(MODEL_PARAMS.get(name, {}))
    return create_model(
        name, data.layout, tasks, embedding_dim=16, tower_hidden=(64,), numeric_mode=numeric_mode, **params
    )


def time_runs(step, batches, warmup: int, runs: int, steps_per_run: int, batch_size: int) -> list[float]:
    """samples/s of ``runs`` timed runs of ``steps_per_run`` calls of ``step(batch)`` after ``warmup`` calls."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    out = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        seen = 0
        for _ in range(steps_per_run):
            b = next(it)
            step(b)
            seen += len(b)
        out.append(seen / (time.perf_counter() - t0))
    return out


def endless(iterator_factory):
    epoch = 0
    while True:
        yield from iterator_factory(epoch)
        epoch += 1


def bench_train(name: str, data, precision: str, args) -> dict[str, Any]:
    import torch

    from mtlrec.data.batches import BatchIterator
    from mtlrec.train.trainer import TrainConfig, Trainer

    model = build_model(name, data, args.numeric_mode)
    cfg = TrainConfig(batch_size=args.batch_size, precision=precision, threads=args.threads, progress=False)
    trainer = Trainer(model, cfg)
    model.train()
    torch.manual_seed(0)
    it = BatchIterator(data, args.batch_size, shuffle=True, seed=0, drop_last=True)
    runs = time_runs(trainer.train_step, endless(it.epoch), args.warmup, args.runs, args.steps_per_run, args.batch_size)
    return _row(name, "train", precision, args.batch_size, runs)


def bench_infer(name: str, data, precision: str, args) -> dict[str, Any]:
    import torch

    from mtlrec.data.batches import BatchIterator
    from mtlrec.train.precision import autocast

    model = build_model(name, data, args.numeric_mode)
    model.eval()
    it = BatchIterator(data, args.infer_batch_size, drop_last=True)

    @torch.no_grad()
    def step(batch):
        with autocast(precision):
            out = model(batch)
        for v in model.predict_proba(out).values():
            v.float().numpy()

    steps = max(2, args.steps_per_run * args.batch_size // args.infer_batch_size)
    runs = time_runs(step, endless(it.epoch), 2, args.runs, steps, args.infer_batch_size)
    return _row(name, "infer", precision, args.infer_batch_size, runs)


def _row(model: str, mode: str, precision: str, batch_size: int, runs: list[float]) -> dict[str, Any]:
    return {
        "model": model,
        "system": "mtlrec",
        "mode": mode,
        "precision": precision,
        "batch_size": batch_size,
        "samples_per_s": round(statistics.median(runs), 1),
        "samples_per_s_runs": [round(r, 1) for r in runs],
        "peak_rss_mib": peak_rss_mib(),
    }


def peer_python(args) -> Path | None:
    for cand in (args.peers_venv, os.environ.get("PEERS_VENV"), "/work/peers-venv", str(PEERS_DIR / ".venv")):
        if cand and (Path(cand) / "bin" / "python").exists():
            return Path(cand) / "bin" / "python"
    return None


def run_peer(peer: str, args) -> dict[str, Any]:
    """Run one peer script in the peers venv; its last stdout line is a JSON row."""
    py = peer_python(args)
    base = {"model": "mmoe", "system": peer, "mode": "train", "precision": "fp32", "batch_size": args.batch_size}
    if py is None:
        return {**base, "error": "peers venv not found: run bash benchmarks/peers/setup_peers.sh"}
    cmd = [
        str(py),
        str(PEERS_DIR / PEERS[peer]),
        "--rows",
        str(args.rows),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
        "--steps-per-run",
        str(args.steps_per_run),
        "--warmup",
        str(args.warmup),
    ]
    print(f"# running peer {peer}: {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**base, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return {**base, **json.loads(lines[-1])}


def main() -> None:
    p = base_parser("throughput", __doc__.split("\n")[0], default_models="mmoe")
    p.add_argument("--rows", type=int, default=None, help="rows of synthetic data (default 500,000; quick 100,000)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--infer-batch-size", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=None, help="timed runs per figure (default 5; quick 3)")
    p.add_argument("--steps-per-run", type=int, default=None, help="train steps per timed run (default 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precisions", default=None, help="fp32,bf16 (default: bf16 only where the CPU supports it)")
    p.add_argument("--numeric-mode", default="dense", choices=["dense", "embed"])
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--peers", action="store_true", help="also run torch-rechub and DeepCTR-Torch (separate venv)")
    p.add_argument("--peers-venv", default=None)
    p.add_argument("--nproc", type=int, default=1, help="also train in 1 and N data-parallel processes (ddp rows)")
    p.add_argument("--device", default="auto", help="train.device of the --nproc rows: auto, cpu, cuda")
    args = p.parse_args()
    args.rows = args.rows or (100_000 if args.quick else 500_000)
    args.runs = args.runs or (3 if args.quick else 5)
    args.steps_per_run = args.steps_per_run or (10 if args.quick else 30)

    import torch

    torch.set_num_threads(args.threads)
    has_bf16 = bf16_supported()
    if args.precisions:
        precisions = [x.strip() for x in args.precisions.split(",")]
    else:
        precisions = ["fp32", "bf16"] if has_bf16 else ["fp32"]
    notes = []
    if not has_bf16:
        notes.append("this CPU lacks avx512_bf16 and AMX: bf16 is not offered, fp32 only")
    if args.quick:
        notes.append(f"quick run: {args.rows:,} rows, {args.runs} runs of {args.steps_per_run} steps")
    for n in notes:
        print(f"# {n}", file=sys.stderr)

    data = encoded_data(args.rows)
    rows: list[dict[str, Any]] = []
    for name in parse_models(args.models, ["mmoe"]):
        for prec in precisions:
            try:
                rows.append(bench_train(name, data, prec, args))
                if not args.no_infer:
                    rows.append(bench_infer(name, data, prec, args))
            except Exception as e:  # a model that cannot run this config is reported, not fatal
                rows.append({"model": name, "system": "mtlrec", "precision": prec, "error": repr(e)})
            print(markdown_table(rows[-2:], ["model", "mode", "precision", "samples_per_s"]), file=sys.stderr)
            if args.nproc > 1:
                from ddp_throughput import train_rows

                rows.extend(train_rows(name, args, prec, args.nproc))
                print(markdown_table(rows[-2:], ["model", "processes", "samples_per_s"]), file=sys.stderr)

    if args.peers:
        del data
        gc.collect()
        ours = next(
            (r for r in rows if r.get("model") == "mmoe" and r.get("mode") == "train" and r.get("precision") == "fp32"),
            None,
        )
        best = max((r.get("samples_per_s", 0) for r in rows if r.get("mode") == "train"), default=0)
        for peer in PEERS:
            r = run_peer(peer, args)
            if ours and r.get("samples_per_s"):
                r["ratio_mtlrec_fp32_over_peer"] = round(ours["samples_per_s"] / r["samples_per_s"], 3)
                r["ratio_mtlrec_best_over_peer"] = round(best / r["samples_per_s"], 3)
            rows.append(r)

    cols = ["system", "model", "mode", "precision", "batch_size", "samples_per_s", "peak_rss_mib"]
    if args.nproc > 1:
        cols.insert(4, "processes")
    if args.peers:
        cols.append("ratio_mtlrec_fp32_over_peer")
    print(("*quick run*\n\n" if args.quick else "") + markdown_table(rows, cols))
    for r in rows:
        if "error" in r:
            print(f"- {r['system']} {r['model']}: {r['error']}")
    for n in notes:
        print(f"- {n}")
    config = {
        "rows": args.rows,
        "categorical_fields": len(vocab_sizes()),
        "total_ids": sum(vocab_sizes()),
        "numeric_fields": NUM_NUM,
        "tasks": NUM_TASKS,
        "embedding_dim": 16,
        "numeric_mode": args.numeric_mode,
        "model_params": {m: MODEL_PARAMS.get(m, {}) for m in parse_models(args.models, ["mmoe"])},
        "tower_hidden": [64],
        "batch_size": args.batch_size,
        "infer_batch_size": args.infer_batch_size,
        "threads": args.threads,
        "runs": args.runs,
        "steps_per_run": args.steps_per_run,
        "warmup": args.warmup,
        "load_average": list(os.getloadavg()),
    }
    path = write_results(
        "throughput",
        command_line(),
        rows,
        args.quick,
        args.out,
        threads=args.threads,
        extra={"config": config, "notes": notes, "bf16_supported": has_bf16},
    )
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
