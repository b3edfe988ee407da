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

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    add_parallel_options,
    base_parser,
    command_line,
    display_path,
    parse_models,
    run_jobs,
    write_results,
)

import mtlrec  # noqa: E402
from mtlrec import metrics as M  # noqa: E402
from mtlrec.experiment import load_config, markdown_table, run_one, summarize, train_config  # noqa: E402

NAME = "census_income"
DEFAULT_MODELS = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "aitm"]
DEFAULT_CONFIG = ROOT / "configs" / "census_income.yaml"
MAIN_TASK = {1: "income", 2: "education"}


def load_bench_config(path: str | Path) -> dict[str, Any]:
    """The benchmark YAML with its ``base:`` file merged under it (:func:`mtlrec.experiment.load_config`)."""
    cfg = load_config(path)
    if isinstance(cfg.get("models"), list):  # the one experiment format (mtlrec.config): back to row names
        cfg["models"] = {
            m.get("label") or m["name"]: {
                **({"model": m["name"]} if m.get("label", m["name"]) != m["name"] else {}),
                **(m.get("params") or {}),
                **({"train": m["train"]} if m.get("train") else {}),
            }
            for m in cfg["models"]
        }
        cfg["data"] = {k: v for k, v in ((cfg.get("data") or {}).get("params") or {}).items() if k != "group"}
        quick = (cfg.get("bench") or {}).get("quick") or {}
        cfg["quick"] = {"seeds": len(quick.get("seeds", [0])), "train_rows": 40_000, "train": quick.get("train")}
    for key in ("data", "model_defaults", "models", "train"):
        cfg.setdefault(key, {})
    return cfg


def row_entry(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``models[name]`` entry of a row name. An entry may name its registry model as ``model:`` (variants of
    one model under distinct row names); when that model is itself a row (``mmoe+uncertainty: {model: mmoe}``),
    the entry is laid over that row's entry, so a variant inherits the row's sizes (also from a ``base:`` file)."""
    entry = copy.deepcopy(cfg["models"].get(name) or {})
    model = entry.get("model", name)
    if model != name:
        entry = {**copy.deepcopy(cfg["models"].get(model) or {}), **entry}
    return entry


def model_params(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """``model_defaults`` updated by the row's entry (:func:`row_entry`), less its ``train:`` overrides."""
    entry = row_entry(cfg, name)
    entry.pop("train", None)
    return {**copy.deepcopy(cfg["model_defaults"]), **entry}


def row_train(cfg: dict[str, Any], name: str, train_raw: dict[str, Any]) -> dict[str, Any]:
    """The train settings of one row: the run's ``train_raw`` updated by the entry's ``train:`` mapping (e.g.
    ``train: {weighting: uncertainty}``; applied after the quick overrides and any epoch cap)."""
    return {**train_raw, **(row_entry(cfg, name).get("train") or {})}


def registry_name(cfg: dict[str, Any], name: str) -> str:
    """The registry model a row name runs: its entry's ``model:``, else the name itself."""
    return row_entry(cfg, name).get("model", name)


_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, data_dir: str, data_params: dict[str, Any], quick_rows: int | None) -> None:
    torch.set_num_threads(threads)
    bundle = mtlrec.load_dataset(NAME, data_dir=data_dir, **data_params)
    _WORKER["bundle"] = quick_subset(bundle, quick_rows) if quick_rows else bundle


def _run(job: tuple[str, dict[str, Any], dict[str, Any], int], out_dir: Path | None = None) -> dict[str, Any]:
    """One validation-selected run of ``job = (row name, params, train settings, seed)``; a ``model`` key in the
    params names the registry model (the row keeps the row name as ``model``). ``out_dir``: keep the run folder
    (checkpoints, :func:`mtlrec.experiment.load_run`)."""
    name, params, train_raw, seed = job
    params = dict(params)
    registry = params.pop("model", name)
    row = run_one(_WORKER["bundle"], registry, params, train_config(train_raw, seed), out_dir)
    row.update(model=name, registry_model=registry)
    return row


def run_line(row: dict[str, Any], main_task: str) -> str:
    """One progress line of a finished run: test AUC per task, validation main-task AUC, best epoch, time."""
    return (
        f"  {row['model']:14s} seed {row['seed']}: test "
        + ", ".join(f"{t} {v['auc']:.4f}" for t, v in row["test"].items())
        + f" | valid {main_task} {row['valid'][main_task]['auc']:.4f}"
        + f" | best epoch {row['best_epoch']}/{row['epochs_run']} | {row['train_seconds']:.0f}s"
    )


def run_info(cfg: dict[str, Any], runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Params (and train overrides), best epochs (1-based), epochs run, mean train seconds and size of one row
    name's runs."""
    mine = [r for r in runs if r["model"] == name]
    overrides = row_entry(cfg, name).get("train")
    return {
        "params": model_params(cfg, name),
        **({"train_overrides": overrides} if overrides else {}),
        "best_epochs": [r["best_epoch"] for r in mine],  # 1-based (run_one)
        "epochs_run": [r["epochs_run"] for r in mine],
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in mine])),
        "num_parameters": mine[0]["num_parameters"],
    }


def quick_subset(bundle, rows: int, seed: int = 0):
    """The first ``rows`` of a fixed random permutation of the training split (valid/test stay whole)."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(bundle.train))[:rows])
    bundle.splits["train"] = bundle.train.take(idx)
    return bundle


def paired_rows(
    summary: list[dict[str, Any]],
    reference: str = "single_task",
    metric: str = "auc",
    *,
    gain: bool = True,
    row_metric: str | None = None,
) -> list[dict[str, Any]]:
    """Each model's test ``metric`` against ``reference``'s, per task, paired over their shared seeds, with a
    paired t-test p-value (:func:`mtlrec.metrics.paired_test`). ``gain=True``: the MTL gain of PLE §5
    (``M_MTL − M_ref``, sign flipped for lower-is-better metrics; row metric ``mtl_gain_<metric>``);
    ``gain=False``: the plain difference ``model − reference`` (row metric ``<metric>_diff_vs_<reference>``)."""
    diff = (lambda x, y: M.mtl_gain(metric, x, y)) if gain else (lambda x, y: x - y)
    by = {(s["model"], s["task"]): s for s in summary if s["metric"] == metric and s["split"] == "test"}
    out = []
    for (model, task), s in by.items():
        ref = by.get((reference, task))
        if ref is None or model == reference:
            continue
        seeds = sorted(set(s["seeds"]) & set(ref["seeds"]))
        a = [s["values"][s["seeds"].index(k)] for k in seeds]
        b = [ref["values"][ref["seeds"].index(k)] for k in seeds]
        test = M.paired_test(a, b)
        values = [diff(x, y) for x, y in zip(a, b, strict=True)]
        out.append(
            {
                "model": model,
                "task": task,
                "metric": row_metric or (f"mtl_gain_{metric}" if gain else f"{metric}_diff_vs_{reference}"),
                "split": "test",
                "mean": diff(s["mean"], ref["mean"]),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
                "seeds": seeds,
                "reference": reference,
                "p_value": None if np.isnan(test["p_value"]) else test["p_value"],
            }
        )
    return out


def paired_table(rows: list[dict[str, Any]], tasks: list[str], what: str = "AUC gain vs single_task") -> str:
    """Markdown: one line per model, one column per task, cells ``mean (p=…)`` of :func:`paired_rows` rows."""
    models = list(dict.fromkeys(g["model"] for g in rows))
    cell = {
        (g["model"], g["task"]): f"{g['mean']:+.4f}" + ("" if g["p_value"] is None else f" (p={g['p_value']:.3f})")
        for g in rows
    }
    lines = ["| model | " + " | ".join(f"{t} {what}" for t in tasks) + " |"]
    lines.append("|---" * (len(tasks) + 1) + "|")
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell.get((m, t), "–") for t in tasks) + " |")
    return "\n".join(lines)


def run_fields(
    args: argparse.Namespace, train_raw: dict[str, Any], missing: list[str], done: int, wall: float, complete: bool
) -> dict[str, Any]:
    """The JSON fields every census benchmark records about how it ran: train settings, skipped models, config
    file, wall time, whether it is complete and how many runs are done, the process layout."""
    return {
        "train": {k: v for k, v in train_raw.items() if k != "progress"},
        "skipped_models": missing,
        "config_file": display_path(args.config),
        "wall_seconds": round(wall, 1),
        "complete": complete,
        "runs_done": done,
        "parallel": {"jobs": args.jobs, "threads_per_job": args.threads},
    }


def report(
    runs,
    *,
    complete,
    args,
    bundle,
    models,
    missing,
    data_params,
    train_raw,
    main_task,
    t_start,
    cfg,
    name=NAME,
    reference="single_task",
    extra=None,
):
    """Summarise the finished runs, write the JSON of benchmark ``name`` (``complete`` false while runs remain;
    ``extra``: more JSON fields) and, when complete, print the tables. Each model is paired with ``reference`` over
    seeds: the MTL gain (PLE §5) for ``single_task``, else the plain difference ``model − reference``."""
    test = [s for s in summarize(runs, "test") if s["metric"] == "auc"]
    valid = [s for s in summarize(runs, "valid") if s["metric"] == "auc"]
    gain = reference == "single_task"
    gains = paired_rows(test, reference, gain=gain)
    tasks = [t.name for t in bundle.tasks]
    wall = time.perf_counter() - t_start

    models = [m for m in models if any(r["model"] == m for r in runs)]
    per_model = {m: run_info(cfg, runs, m) for m in models}
    out = write_results(
        name,
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
                "reference": reference,
                "rows": {k: len(getattr(bundle, k)) for k in ("train", "valid", "test")},
                "data_params": {k: v for k, v in data_params.items() if k != "data_dir"},
            },
            "models": per_model,
            **run_fields(args, train_raw, missing, len(runs), wall, complete),
            **(extra or {}),
        },
    )
    if not complete:
        return out
    print("\nTest AUC, mean ± std over seeds (validation-selected; test evaluated once per run):\n")
    print(markdown_table(test))
    if gains:
        what = "MTL gain (PLE §5) of mean test AUC over single_task" if gain else f"Test AUC − {reference}"
        print(f"\n{what}; p: paired t-test over seeds:\n")
        print(paired_table(gains, tasks, "AUC gain vs single_task" if gain else f"AUC − {reference}"))
    print(f"\nwall time {wall / 60:.1f} min, {args.jobs} job(s) × {args.threads} thread(s)")
    return out


def add_run_options(p: argparse.ArgumentParser, default_config: Path) -> None:
    """The census benchmarks' options beyond the BENCHMARKS.md contract: split seed, config, threads, jobs, and an
    epoch cap (for budget-limited runs; the cap is recorded in the JSON's train settings)."""
    p.add_argument("--epochs", type=int, default=None, help="cap on training epochs (default: the config's)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed valid/test split (default 0)")
    p.add_argument("--config", default=str(default_config), help="hyper-parameters (YAML)")
    add_parallel_options(p)


def run_plan(args: argparse.Namespace, default_models: list[str]):
    """``(cfg, models, missing, seeds, quick_rows, train_raw)`` of a census benchmark's arguments: the config, the
    row names whose registry model exists and those skipped, the seeds, the quick training subset size (None for
    a full run) and the train settings with the quick overrides applied (``monitor`` is the caller's)."""
    cfg = load_bench_config(args.config)
    quick_cfg = cfg.get("quick") or {}
    available = set(mtlrec.list_models())
    wanted = parse_models(args.models, default_models)
    models = [m for m in wanted if registry_name(cfg, m) in available]
    missing = [m for m in wanted if m not in models]
    if missing:
        print(f"skipping models not registered in this mtlrec: {', '.join(missing)}")
    seeds = list(range(int(quick_cfg.get("seeds", 1)) if args.quick else args.seeds))
    quick_rows = int(quick_cfg.get("train_rows", 40_000)) if args.quick else None
    train_raw = {**cfg["train"], **(quick_cfg.get("train") or {} if args.quick else {}), "progress": False}
    if args.epochs:
        train_raw["epochs"] = min(args.epochs, train_raw.get("epochs", args.epochs))
    return cfg, models, missing, seeds, quick_rows, train_raw


def prepare(args: argparse.Namespace, default_models: list[str]) -> tuple[dict[str, Any], list[int], int | None]:
    """Plan a single-group census benchmark (:func:`run_plan`, group ``args.group``), load its bundle in this
    process and print what will run; returns :func:`report`'s keyword arguments, the seeds and the quick subset
    size."""
    t_start = time.perf_counter()
    cfg, models, missing, seeds, quick_rows, train_raw = run_plan(args, default_models)
    data_params = {**cfg["data"], "group": args.group, "split_seed": args.split_seed}
    _init_worker(args.threads, args.data_dir, data_params, quick_rows)
    bundle = _WORKER["bundle"]
    main_task = MAIN_TASK[args.group]
    train_raw["monitor"] = f"{main_task}.auc"
    print(
        f"census-income group {args.group}: train {len(bundle.train):,} / valid {len(bundle.valid):,} / test "
        f"{len(bundle.test):,} rows; split seed {args.split_seed}; seeds {seeds}; models {', '.join(models)}"
        + ("  [QUICK: training subset, fewer epochs/seeds; not comparable to the full run]" if args.quick else "")
    )
    ctx = dict(
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
    return ctx, seeds, quick_rows


def execute(jobs: list, ctx: dict[str, Any], quick_rows: int | None, fn=_run, on_row=None, **report_kw) -> Path:
    """Run the jobs (``args.jobs`` processes, :func:`run_jobs`), printing each finished run and rewriting the JSON
    after it (``complete: false``); ``on_row(row)`` sees every row first. Returns the final JSON's path."""
    args = ctx["args"]
    init_args = (args.threads, args.data_dir, ctx["data_params"], quick_rows)
    runs: list[dict[str, Any]] = []
    for row in run_jobs(jobs, args.jobs, init_args, fn, _init_worker):
        if on_row:
            on_row(row)
        runs.append(row)
        print(run_line(row, ctx["main_task"]), flush=True)
        report(runs, complete=False, **ctx, **report_kw)
    return report(runs, complete=True, **ctx, **report_kw)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0], default_models=",".join(DEFAULT_MODELS))
    p.add_argument("--group", type=int, default=1, choices=(1, 2), help="MMoE task group (default 1)")
    add_run_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ctx, seeds, quick_rows = prepare(args, DEFAULT_MODELS)
    cfg, train_raw = ctx["cfg"], ctx["train_raw"]
    # seed-major order: an interrupted run still has every model with its first seeds (the JSON is rewritten,
    # marked "complete": false, after every run)
    jobs = [(m, model_params(cfg, m), row_train(cfg, m, train_raw), seed) for seed in seeds for m in ctx["models"]]
    print(f"wrote {execute(jobs, ctx, quick_rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
