"""DML on MovieLens-1M: Shared-Bottom, MMoE and PLE, each plain, +CTFM, +GKD and +DML (CTFM + GKD).

Protocol (DML paper, MODELS.md B.2-B.3): tasks like (rating >= 4, AUC) and rating (regression, MSE); random 8:1:1
split of the ratings (split seed 0, fixed, so seeds vary only initialisation and batch order); embedding 16, towers
[128, 64], experts [256, 128] (MMoE 4 experts; PLE 1 shared + 1 specific per task, 2 levels; Shared-Bottom one
[256, 128] bottom); Adam lr 1e-3, batch 512, equal task weights, early stopping on validation like-AUC (patience 3),
test evaluated once at the selected epoch. The +CTFM/+GKD runs of a seed start from the same backbone weights as
the plain run of that seed (the plug-in is built after the model), and each variant is compared with its plain
backbone by a paired t-test over seeds (``mtlrec.metrics.paired_test``).

    python benchmarks/movielens_dml.py --seeds 5 [--jobs 2 --threads 1]
    python benchmarks/movielens_dml.py --quick          # 10k ratings, 2 seeds, 1 epoch: exercises everything

``--jobs N`` trains N runs at once in forked processes (each with ``--threads`` torch threads); the results, their
order and the tables are those of a sequential run. ``--epochs N`` caps the epochs (recorded in the JSON) for
budget-limited runs. Runs go seed-major and the JSON is rewritten after every run (``complete: false`` until the
last), with every run's valid/test metrics, selected epoch and seconds under ``runs``.

The shared folder holds the first 487,650 ratings (users 1-2,999); with the full ratings.dat the script uses it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_parallel_options,
    base_parser,
    command_line,
    markdown_table,
    parse_models,
    run_jobs,
    write_results,
)

from mtlrec.data.datasets import load_dataset  # noqa: E402
from mtlrec.experiment import run_one  # noqa: E402
from mtlrec.metrics import paired_test  # noqa: E402
from mtlrec.train.trainer import TrainConfig  # noqa: E402

NAME = "movielens_dml"
MODELS = ["shared_bottom", "mmoe", "ple"]
VARIANTS = ["plain", "ctfm", "gkd", "dml"]
COMMON = {"embedding_dim": 16, "tower_hidden": [128, 64]}
BACKBONE = {
    "shared_bottom": {"bottom_hidden": [256, 128]},
    "mmoe": {"num_experts": 4, "expert_hidden": [256, 128]},
    "ple": {"num_shared_experts": 1, "num_specific_experts": 1, "num_levels": 2, "expert_hidden": [256, 128]},
}
METRICS = {"like": "auc", "rating": "mse"}
TRAIN = {"epochs": 20, "batch_size": 512, "lr": 1e-3, "patience": 3}  # --epochs overrides the cap
QUICK_RATINGS = 10_000


def model_params(model: str, variant: str) -> dict:
    params = {**COMMON, **BACKBONE.get(model, {})}
    if variant != "plain":
        params["dml"] = {"variant": variant}
    return params


_WORKER: dict[str, Any] = {}


def _run(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """One validation-selected run of ``job = (model, variant, seed, epochs)`` on the bundle of this process (the
    parent's, inherited by forked workers): its valid and test metrics, selected epoch, epochs run and wall seconds."""
    model, variant, seed, epochs = job
    cfg = TrainConfig(**{**TRAIN, "epochs": epochs}, seed=seed, progress=False)
    t0 = time.perf_counter()
    row = run_one(_WORKER["bundle"], model, model_params(model, variant), cfg, None)
    return {
        "model": model,
        "variant": variant,
        "seed": seed,
        "valid": row["valid"],
        "test": row["test"],
        "best_epoch": row["best_epoch"],  # 1-based (run_one)
        "epochs_run": row["epochs_run"],
        "seconds": time.perf_counter() - t0,
    }


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of the test metric per (model, variant, task) over the finished seeds, each variant paired with
    its plain backbone over the seeds both have finished."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["variant"]), []).append(run)
    rows = []
    for (model, variant), group in groups.items():
        for task, metric in METRICS.items():
            values = [r["test"][task][metric] for r in group]
            t = torch.tensor(values, dtype=torch.float64)
            row = {
                "model": model,
                "variant": variant,
                "task": task,
                "metric": metric,
                "split": "test",
                "mean": float(t.mean()),
                "std": float(t.std()) if len(values) > 1 else 0.0,
                "values": values,
                "seeds": [r["seed"] for r in group],
                "best_epochs": [r["best_epoch"] for r in group],
                "train_seconds_mean": sum(r["seconds"] for r in group) / len(group),
            }
            plain = {r["seed"]: r["test"][task][metric] for r in groups.get((model, "plain"), [])}
            common = [r["seed"] for r in group if r["seed"] in plain]
            if variant != "plain" and len(common) > 1:
                by_seed = {r["seed"]: r["test"][task][metric] for r in group}
                test = paired_test([by_seed[s] for s in common], [plain[s] for s in common])
                row["diff_vs_plain"] = test["mean_diff"]
                row["p_value_vs_plain"] = test["p_value"]
            rows.append(row)
    order = {(m, v): i for i, (m, v) in enumerate((m, v) for m in MODELS for v in VARIANTS + ["ctfm_no_sg"])}
    return sorted(rows, key=lambda r: (order.get((r["model"], r["variant"]), 99), r["task"]))


def main() -> None:
    p = base_parser(NAME, __doc__.split("\n")[0], default_models=",".join(MODELS))
    p.add_argument("--variants", default=",".join(VARIANTS), help="plain,ctfm,ctfm_no_sg,gkd,dml")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default 20; quick 1)")
    add_parallel_options(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = parse_models(args.models, MODELS)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "plain" not in variants:
        variants.insert(0, "plain")
    n_seeds = min(args.seeds, 2) if args.quick else args.seeds
    seeds = list(range(n_seeds))
    epochs = args.epochs or (1 if args.quick else TRAIN["epochs"])
    data_params = {"data_dir": args.data_dir, "split_seed": 0}
    if args.quick:
        data_params["max_ratings"] = QUICK_RATINGS
    bundle = _WORKER["bundle"] = load_dataset("movielens_1m", **data_params)
    print(f"data: {bundle.summary()['rows']} (ratings file {bundle.meta['source']['ratings']})", flush=True)

    extra = {
        "protocol": {
            "data": {k: v for k, v in data_params.items() if k != "data_dir"},
            "ratings_file": bundle.meta["source"]["ratings"],
            "rows": bundle.summary()["rows"],
            "params": {m: model_params(m, "dml") for m in models},
            "train": {**TRAIN, "epochs": epochs, "monitor": "like.auc"},
            "selection": "early stopping and best epoch on validation like AUC only; test evaluated once per run",
        },
        "parallel": {"jobs": args.jobs, "threads_per_job": args.threads},
    }
    threads = args.threads * args.jobs
    t_start = time.perf_counter()

    def write(runs: list[dict[str, Any]], complete: bool) -> Path:
        fields = {**extra, "complete": complete, "runs": runs, "wall_minutes": (time.perf_counter() - t_start) / 60}
        return write_results(
            NAME, command_line(), summary_rows(runs), args.quick, args.out, threads=threads, extra=fields
        )

    # seed-major order, JSON rewritten after every run ("complete": false until the end): an interrupted run keeps
    # every (model, variant) with its first seeds
    jobs = [(model, variant, seed, epochs) for seed in seeds for model in models for variant in variants]
    runs: list[dict[str, Any]] = []
    for row in run_jobs(jobs, args.jobs, (args.threads,), _run, torch.set_num_threads):
        runs.append(row)
        print(
            f"{row['model']:14s} {row['variant']:10s} seed {row['seed']}: like AUC {row['test']['like']['auc']:.4f}, "
            f"rating MSE {row['test']['rating']['mse']:.4f} (best epoch {row['best_epoch']} of "
            f"{row['epochs_run']}, {row['seconds']:.0f} s)",
            flush=True,
        )
        write(runs, complete=False)
    out = write(runs, complete=True)

    title = "MovieLens-1M, DML variants" + (
        f" (QUICK: {QUICK_RATINGS:,} ratings, {epochs} epoch(s); no quality claim)" if args.quick else ""
    )
    print(f"\n### {title}\n")
    print(
        markdown_table(
            summary_rows(runs),
            ["model", "variant", "task", "metric", "mean", "std", "diff_vs_plain", "p_value_vs_plain"],
            headers=["model", "variant", "task", "metric", "mean", "std", "Δ vs plain", "p (paired t)"],
        )
    )
    print(f"\nwall time {(time.perf_counter() - t_start) / 60:.1f} min, {args.jobs} job(s) × {args.threads} thread(s)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
