"""Census-Income (KDD), groups 1 and 2: DEPHN against MT-PHN, MMoE, PLE and single-task models, and its ablations.

The DEPHN paper's (Kong et al., IJCNN'23; MODELS.md A.3-A.5) two questions on the MMoE/PLE census protocol
(MODELS.md E.1-E.2, the one of ``benchmarks/census_income.py``, whose machinery this script reuses):

* RQ1: does DEPHN beat MT-PHN in its three Table I expert settings (``mt_phn[d_pub_cf_pri]`` etc.), MMoE, PLE
  and single-task models?
* RQ2: what do the virtual gradient (eqs. 8-9), the explicit mapping (A.3.3) and soft selection gating (eq. 1)
  contribute (``dephn-no_vg``, ``dephn-no_mapping``, ``dephn-no_ssg``)?

Each row name is an entry of ``configs/census_dephn.yaml`` (``model:`` names its registry model; the file inherits
data, model defaults, the mmoe/ple/single_task entries and the train settings from ``configs/census_income.yaml``).
Per group: the train file trains, the test file is split 1:1 into validation and test with a fixed split seed;
each (model, seed) run stops early on and keeps the best epoch of the **validation main-task AUC** (income in
group 1, education in group 2), and evaluates the test split once.

    python benchmarks/census_dephn.py [--groups 1,2] [--seeds 5] [--models dephn,mmoe] [--jobs 2 --threads 1]
    python benchmarks/census_dephn.py --quick --threads 1      # a few minutes: subset, 1 seed, 1 epoch

Prints per group: test AUC and logloss (mean ± std over seeds), the MTL gain over ``single_task`` (PLE §5) and the
difference to MMoE with a paired t-test over seeds. Writes the BENCHMARKS.md JSON, rewritten after every run
(``complete: false`` until done): quality rows (``auc``, ``logloss``; ``test`` and ``valid``), ``mtl_gain_auc`` /
``mtl_gain_logloss`` rows and ``auc_diff_vs_mmoe`` / ``logloss_diff_vs_mmoe`` rows (``model − mmoe``, with
``p_value``); every row carries its ``group``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from census_income import (  # noqa: E402
    _WORKER,
    MAIN_TASK,
    _init_worker,
    _run,
    add_run_options,
    model_params,
    paired_rows,
    paired_table,
    registry_name,
    row_train,
    run_fields,
    run_info,
    run_line,
    run_plan,
)
from common import ROOT, base_parser, command_line, run_jobs, write_results  # noqa: E402

from mtlrec.experiment import markdown_table, summarize  # noqa: E402

NAME = "census_dephn"
DEFAULT_MODELS = [
    "dephn",
    "mt_phn[d_pub_cf_pri]",
    "mt_phn[d_pri_cf_pub]",
    "mt_phn[d_pub_cf_pub]",
    "dephn-no_vg",
    "dephn-no_mapping",
    "dephn-no_ssg",
    "mmoe",
    "ple",
    "single_task",
]
DEFAULT_CONFIG = ROOT / "configs" / "census_dephn.yaml"
METRICS = ("auc", "logloss")
REFERENCE = "mmoe"

_BUNDLES: dict[int, Any] = {}


def _init_groups(threads: int, data_dir: str, data_params: dict[int, dict[str, Any]], quick_rows: int | None) -> None:
    """Load every group's bundle once per process (census_income's worker set-up, one call per group)."""
    for group, params in data_params.items():
        _init_worker(threads, data_dir, params, quick_rows)
        _BUNDLES[group] = _WORKER["bundle"]


def _run_in_group(job: tuple[int, str, dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    group, *rest = job
    _WORKER["bundle"] = _BUNDLES[group]
    return {**_run(tuple(rest)), "group": group}


def group_rows(runs: list[dict[str, Any]], group: int) -> list[dict[str, Any]]:
    """One group's quality rows (test and valid, AUC and logloss), MTL gains over single_task and differences to
    MMoE (paired over seeds), each tagged with ``group``."""
    mine = [r for r in runs if r["group"] == group]
    test = [s for s in summarize(mine, "test") if s["metric"] in METRICS]
    valid = [s for s in summarize(mine, "valid") if s["metric"] in METRICS]
    paired = [
        row
        for metric in METRICS
        for row in (*paired_rows(test, "single_task", metric), *paired_rows(test, REFERENCE, metric, gain=False))
    ]
    return [{**r, "group": group} for r in test + valid + paired]


def model_entry(cfg: dict[str, Any], runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A row name's registry model and params, and per group its best epochs, epochs run, time and size."""
    entry: dict[str, Any] = {"registry_model": registry_name(cfg, name), "params": model_params(cfg, name)}
    for group in sorted({r["group"] for r in runs if r["model"] == name}):
        info = run_info(cfg, [r for r in runs if r["group"] == group], name)
        entry[f"group{group}"] = {k: v for k, v in info.items() if k != "params"}
    return entry


def group_report(rows: list[dict[str, Any]], group: int, tasks: list[str]) -> str:
    """The printed tables of one group: test AUC/logloss, MTL gains, differences to MMoE."""
    mine = [r for r in rows if r["group"] == group]

    def pick(metric: str) -> list[dict[str, Any]]:
        return [r for r in mine if r["metric"] == metric and r["split"] == "test"]

    quality = [r for r in mine if r["metric"] in METRICS and r["split"] == "test"]
    parts = [
        f"### Group {group} ({', '.join(tasks)}); selection on validation {MAIN_TASK[group]} AUC",
        "Test AUC and logloss, mean ± std over seeds:\n\n" + markdown_table(quality),
    ]
    for metric, what, label in (
        ("mtl_gain_auc", "AUC gain", "MTL gain (PLE §5) of test AUC over single_task"),
        ("mtl_gain_logloss", "logloss gain", "MTL gain of test logloss (single_task − model, higher is better)"),
        (f"auc_diff_vs_{REFERENCE}", f"AUC − {REFERENCE}", "Test AUC difference to MMoE (model − mmoe)"),
        (f"logloss_diff_vs_{REFERENCE}", f"logloss − {REFERENCE}", "Test logloss difference to MMoE (lower is better)"),
    ):
        if pick(metric):
            parts.append(f"{label}; p: paired t-test over seeds:\n\n" + paired_table(pick(metric), tasks, what))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0], default_models=",".join(DEFAULT_MODELS))
    p.add_argument("--groups", default="1,2", help="census task groups, comma-separated (default 1,2)")
    add_run_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    groups = sorted({int(g) for g in args.groups.split(",") if g.strip()})
    if not groups or not set(groups) <= set(MAIN_TASK):
        p.error(f"--groups must name some of {sorted(MAIN_TASK)}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    cfg, models, missing, seeds, quick_rows, train_base = run_plan(args, DEFAULT_MODELS)
    data_params = {g: {**cfg["data"], "group": g, "split_seed": args.split_seed} for g in groups}
    train_raw = {g: {**train_base, "monitor": f"{MAIN_TASK[g]}.auc"} for g in groups}

    _init_groups(args.threads, args.data_dir, data_params, quick_rows)
    tasks = {g: [t.name for t in _BUNDLES[g].tasks] for g in groups}
    sizes = {g: {k: len(getattr(_BUNDLES[g], k)) for k in ("train", "valid", "test")} for g in groups}
    print(
        f"census-income groups {groups} {sizes}; split seed {args.split_seed}; seeds {seeds}; "
        f"models {', '.join(models)}"
        + ("  [QUICK: training subset, fewer epochs/seeds; not comparable to the full run]" if args.quick else "")
    )

    def report(runs: list[dict[str, Any]], complete: bool) -> Path:
        rows = [r for g in groups for r in group_rows(runs, g)]
        done = [m for m in models if any(r["model"] == m for r in runs)]
        wall = time.perf_counter() - t_start
        out = write_results(
            NAME,
            command_line(),
            rows,
            args.quick,
            args.out,
            threads=args.threads * args.jobs,
            extra={
                "protocol": {
                    "groups": {
                        str(g): {"tasks": tasks[g], "main_task": MAIN_TASK[g], "rows": sizes[g]} for g in groups
                    },
                    "split_seed": args.split_seed,
                    "selection": "early stopping and best epoch on the validation main-task AUC only",
                    "reference": REFERENCE,
                    "data_params": cfg["data"],
                },
                "models": {name: model_entry(cfg, runs, name) for name in done},
                **run_fields(args, train_base, missing, len(runs), wall, complete),
            },
        )
        if complete:
            for g in groups:
                print("\n" + group_report(rows, g, tasks[g]))
            print(f"\nwall time {wall / 60:.1f} min, {args.jobs} job(s) × {args.threads} thread(s)")
        return out

    # seed-major, then group: an interrupted run still has every model in every group with its first seeds
    jobs = [
        (g, name, model_params(cfg, name), row_train(cfg, name, train_raw[g]), seed)
        for seed in seeds
        for g in groups
        for name in models
    ]
    runs: list[dict[str, Any]] = []
    init_args = (args.threads, args.data_dir, data_params, quick_rows)
    for row in run_jobs(jobs, args.jobs, init_args, fn=_run_in_group, init=_init_groups):
        runs.append(row)
        print(f"[group {row['group']}]" + run_line(row, MAIN_TASK[row["group"]]), flush=True)
        report(runs, complete=False)
    print(f"wrote {report(runs, complete=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
