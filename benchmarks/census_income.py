"""Census-Income (KDD) quality benchmark: the MMoE §6.3 / PLE §5.3 protocol (MODELS.md E.1, E.2; BENCHMARKS.md).

Protocol: the train file (199,523 rows) trains; the test file (99,762 rows) is split 1:1 at random into validation
and test with a FIXED split seed (``--split-seed``, default 0, recorded in the JSON). Task group 1: income > 50K
(main task) and marital status "never married" (auxiliary); group 2: education ≥ Bachelors and never married. The
label columns and ``instance_weight`` are never inputs; vocabularies and numeric statistics are fitted on train only.
Each (model, seed) run trains with early stopping on the **validation main-task AUC only**, restores the best
validation epoch, and evaluates the test split once. The seed drives model initialisation and batch shuffling.
Hyper-parameters live in ``configs/census_income.yaml`` (chosen on validation AUC; the file says how).

    python benchmarks/census_income.py [--seeds 5] [--models mmoe,ple] [--group 1] [--quick] [--out FILE]

Prints a Markdown table of mean ± std test AUC per task and the MTL gain over ``single_task`` (PLE §5:
``M_MTL − M_single``), and writes the BENCHMARKS.md JSON: quality rows ``model, task, metric, split, mean, std,
values, seeds`` for test and validation, plus gain rows (``metric: "mtl_gain_auc"``).
"""

from __future__ import annotations

import copy
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, base_parser, command_line, parse_models, write_results  # noqa: E402

import mtlrec  # noqa: E402
from mtlrec import metrics as M  # noqa: E402
from mtlrec.experiment import markdown_table, run_one, summarize, train_config  # noqa: E402

NAME = "census_income"
DEFAULT_MODELS = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "aitm"]
DEFAULT_CONFIG = ROOT / "configs" / "census_income.yaml"
MAIN_TASK = {1: "income", 2: "education"}


def load_bench_config(path: str | Path) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("data", "model_defaults", "models", "train"):
        cfg.setdefault(key, {})
    return cfg


def model_params(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return {**copy.deepcopy(cfg["model_defaults"]), **copy.deepcopy(cfg["models"].get(name) or {})}


_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, data_dir: str, data_params: dict[str, Any], quick_rows: int | None) -> None:
    torch.set_num_threads(threads)
    bundle = mtlrec.load_dataset(NAME, data_dir=data_dir, **data_params)
    _WORKER["bundle"] = quick_subset(bundle, quick_rows) if quick_rows else bundle


def _run(job: tuple[str, dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    name, params, train_raw, seed = job
    return run_one(_WORKER["bundle"], name, params, train_config(train_raw, seed), None)


def quick_subset(bundle, rows: int, seed: int = 0):
    """The first ``rows`` of a fixed random permutation of the training split (valid/test stay whole)."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(bundle.train))[:rows])
    bundle.splits["train"] = bundle.train.take(idx)
    return bundle


def gain_rows(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MTL gain (PLE §5) of each model's mean test AUC over single_task's, per task, with a paired t-test over
    the shared seeds."""
    by = {(s["model"], s["task"]): s for s in summary if s["metric"] == "auc" and s["split"] == "test"}
    out = []
    for (model, task), s in by.items():
        ref = by.get(("single_task", task))
        if ref is None or model == "single_task":
            continue
        seeds = sorted(set(s["seeds"]) & set(ref["seeds"]))
        a = [s["values"][s["seeds"].index(k)] for k in seeds]
        b = [ref["values"][ref["seeds"].index(k)] for k in seeds]
        test = M.paired_test(a, b)
        out.append(
            {
                "model": model,
                "task": task,
                "metric": "mtl_gain_auc",
                "split": "test",
                "mean": M.mtl_gain("auc", s["mean"], ref["mean"]),
                "std": float(np.std(np.subtract(a, b), ddof=1)) if len(a) > 1 else 0.0,
                "values": [M.mtl_gain("auc", x, y) for x, y in zip(a, b, strict=True)],
                "seeds": seeds,
                "reference": "single_task",
                "p_value": None if np.isnan(test["p_value"]) else test["p_value"],
            }
        )
    return out


def gain_table(gains: list[dict[str, Any]], tasks: list[str]) -> str:
    models = list(dict.fromkeys(g["model"] for g in gains))
    cell = {
        (g["model"], g["task"]): f"{g['mean']:+.4f}" + ("" if g["p_value"] is None else f" (p={g['p_value']:.3f})")
        for g in gains
    }
    lines = ["| model | " + " | ".join(f"{t} AUC gain vs single_task" for t in tasks) + " |"]
    lines.append("|---" * (len(tasks) + 1) + "|")
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell.get((m, t), "–") for t in tasks) + " |")
    return "\n".join(lines)


def report(runs, *, complete, args, bundle, models, missing, data_params, train_raw, main_task, t_start, cfg):
    """Summarise the finished runs, write the JSON (``complete`` false while runs remain) and, when complete,
    print the tables."""
    test = [s for s in summarize(runs, "test") if s["metric"] == "auc"]
    valid = [s for s in summarize(runs, "valid") if s["metric"] == "auc"]
    gains = gain_rows(test, runs)
    tasks = [t.name for t in bundle.tasks]
    wall = time.perf_counter() - t_start

    models = [m for m in models if any(r["model"] == m for r in runs)]
    per_model = {
        name: {
            "params": model_params(cfg, name),
            "best_epochs": [r["best_epoch"] + 1 for r in runs if r["model"] == name],
            "epochs_run": [r["epochs_run"] for r in runs if r["model"] == name],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs if r["model"] == name])),
            "num_parameters": next(r["num_parameters"] for r in runs if r["model"] == name),
        }
        for name in models
    }
    out = write_results(
        NAME,
        command_line(),
        test + valid + gains,
        args.quick,
        args.out,
        threads=args.threads * args.jobs,
        extra={
            "protocol": {
                "group": args.group,
                "tasks": tasks,
                "main_task": main_task,
                "split_seed": args.split_seed,
                "selection": f"early stopping and best epoch on validation {main_task} AUC only",
                "rows": {k: len(getattr(bundle, k)) for k in ("train", "valid", "test")},
                "data_params": {k: v for k, v in data_params.items() if k != "data_dir"},
            },
            "train": {k: v for k, v in train_raw.items() if k != "progress"},
            "models": per_model,
            "skipped_models": missing,
            "config_file": str(Path(args.config).resolve().relative_to(ROOT))
            if Path(args.config).resolve().is_relative_to(ROOT)
            else str(args.config),
            "wall_seconds": round(wall, 1),
            "complete": complete,
            "runs_done": len(runs),
            "parallel": {"jobs": args.jobs, "threads_per_job": args.threads},
        },
    )
    if not complete:
        return out
    print("\nTest AUC, mean ± std over seeds (validation-selected; test evaluated once per run):\n")
    print(markdown_table(test))
    if gains:
        print("\nMTL gain (PLE §5) of mean test AUC over single_task; p: paired t-test over seeds:\n")
        print(gain_table(gains, tasks))
    print(f"\nwall time {wall / 60:.1f} min, {args.jobs} job(s) × {args.threads} thread(s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0], default_models=",".join(DEFAULT_MODELS))
    p.add_argument("--group", type=int, default=1, choices=(1, 2), help="MMoE task group (default 1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed valid/test split (default 0)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="hyper-parameters (YAML)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel processes (default 1; use --jobs 2 --threads 1 to spend 2 cores on two runs at once)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    cfg = load_bench_config(args.config)
    quick_cfg = cfg.get("quick") or {}
    available = set(mtlrec.list_models())
    wanted = parse_models(args.models, DEFAULT_MODELS)
    models = [m for m in wanted if m in available]
    missing = [m for m in wanted if m not in available]
    if missing:
        print(f"skipping models not registered in this mtlrec: {', '.join(missing)}")
    n_seeds = int(quick_cfg.get("seeds", 1)) if args.quick else args.seeds
    seeds = list(range(n_seeds))

    data_params = {**cfg["data"], "group": args.group, "split_seed": args.split_seed}
    quick_rows = int(quick_cfg.get("train_rows", 40_000)) if args.quick else None
    _init_worker(args.threads, args.data_dir, data_params, quick_rows)
    bundle = _WORKER["bundle"]
    main_task = MAIN_TASK[args.group]
    train_raw = {**cfg["train"], **(quick_cfg.get("train") or {} if args.quick else {})}
    train_raw.update(monitor=f"{main_task}.auc", progress=False)
    print(
        f"census-income group {args.group}: train {len(bundle.train):,} / valid {len(bundle.valid):,} / test "
        f"{len(bundle.test):,} rows; split seed {args.split_seed}; seeds {seeds}; models {', '.join(models)}"
        + ("  [QUICK: training subset, fewer epochs/seeds; not comparable to the full run]" if args.quick else "")
    )

    # seed-major order: an interrupted run still has every model with its first seeds (the JSON is rewritten,
    # marked "complete": false, after every run)
    jobs = [(name, model_params(cfg, name), train_raw, seed) for seed in seeds for name in models]
    if args.jobs > 1:
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(args.jobs, _init_worker, (args.threads, args.data_dir, data_params, quick_rows))
        results = pool.imap(_run, jobs)
    else:
        pool, results = None, map(_run, jobs)
    ctx_args = dict(
        args=args,
        bundle=bundle,
        models=models,
        missing=missing,
        data_params=data_params,
        train_raw=train_raw,
        main_task=main_task,
        t_start=t_start,
        cfg=cfg,
    )
    runs: list[dict[str, Any]] = []
    for row in results:
        name, seed = row["model"], row["seed"]
        runs.append(row)
        print(
            f"  {name:14s} seed {seed}: test "
            + ", ".join(f"{t} {v['auc']:.4f}" for t, v in row["test"].items())
            + f" | valid {main_task} {row['valid'][main_task]['auc']:.4f}"
            + f" | best epoch {row['best_epoch'] + 1}/{row['epochs_run']} | {row['train_seconds']:.0f}s",
            flush=True,
        )
        report(runs, complete=False, **ctx_args)
    if pool is not None:
        pool.close()
        pool.join()

    out = report(runs, complete=True, **ctx_args)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
