"""Census-Income task group 1 (income > 50K, never married): DTN against the sparse-sharing and soft-sharing baselines.

Models: ``dtn``, ``snr_trans``, ``snr_aver``, ``mssm``, ``mmoe`` (reference), plus ``cross_stitch``, ``sluice``
and ``ml_mmoe`` when they are registered, and MMoE under every registered loss-weighting strategy other than
``fixed`` (labels ``mmoe+<weighting>``). Validation-selected (monitor ``income.auc``), test evaluated once per seed.
Also computes the per-task permutation importance of DTN (seed 0) on the validation split (the "divergence phenomenon") and
writes its table and plot next to the JSON.

    python benchmarks/census_dtn_baselines.py --quick          # a few minutes, subset, 1 seed
    python benchmarks/census_dtn_baselines.py --seeds 5        # the full run

Follows the contract of BENCHMARKS.md (``--out --models --seeds --data-dir --quick``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, command_line, parse_models, write_results  # noqa: E402

import mtlrec  # noqa: E402
from mtlrec.data.bundle import DataBundle  # noqa: E402
from mtlrec.data.datasets import load_dataset  # noqa: E402
from mtlrec.experiment import markdown_table, seed_everything, summarize  # noqa: E402
from mtlrec.explain.importance import divergence, importance_table, permutation_importance, plot_importance  # noqa: E402
from mtlrec.models.registry import create_model  # noqa: E402
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate  # noqa: E402
from mtlrec.train.weighting import list_weightings  # noqa: E402

NAME = "census_dtn_baselines"
CORE = ["dtn", "snr_trans", "snr_aver", "mssm", "mmoe"]
OPTIONAL = ["cross_stitch", "sluice", "ml_mmoe"]

COMMON = {"embedding_dim": 16, "tower_hidden": [64]}
# MemoNet's crossed fields in DTN: 16 categorical columns (the official Ali-CCP config crosses 17 sparse fields);
# all 32 categorical columns would give 496 crosses per sample and branch
CROSS_FIELDS = [
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "major_ind_code",
    "major_occ_code",
    "race",
    "sex",
    "full_or_part_emp",
    "tax_filer_stat",
    "det_hh_fam_stat",
    "det_hh_summ",
    "citizenship",
    "own_or_self",
    "vet_benefits",
    "year",
]
PARAMS: dict[str, dict[str, Any]] = {
    "dtn": {
        "embedding_dim": 16,
        "tower_hidden": [128, 64],
        "fi_dim": 128,
        "masknet_agg_dim": 128,
        "masknet_block_dim": 64,
        "masknet_hidden": [128, 128],
        "num_buckets": 50_000,
        "memonet_fields": CROSS_FIELDS,
    },
    "snr_trans": {**COMMON, "num_subnets": [3, 3], "subnet_hidden": [64, 32], "l0_weight": 1e-3},
    "snr_aver": {**COMMON, "num_subnets": [3, 3], "subnet_hidden": [64, 32], "l0_weight": 1e-3},
    "mssm": {**COMMON, "num_cells": [3, 3], "cell_hidden": [64, 32], "l0_weight": 1e-3},
    "mmoe": {**COMMON, "num_experts": 8, "expert_hidden": [64]},
}
QUICK_PARAMS = {
    "dtn": {
        "embedding_dim": 8,
        "fi_dim": 64,
        "masknet_agg_dim": 64,
        "masknet_hidden": [64],
        "num_buckets": 10_000,
        "memonet_fields": CROSS_FIELDS[:8],
    }
}
WEIGHTING_PARAMS: dict[str, dict[str, Any]] = {"ple_dynamic": {"gammas": 0.9}}


def subsample(bundle: DataBundle, rows: dict[str, int], seed: int = 0) -> DataBundle:
    """The same bundle with each split cut to a random subset of ``rows[split]`` rows (quick runs)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, data in bundle.splits.items():
        n = min(len(data), rows.get(name, len(data)))
        splits[name] = data.take(np.sort(rng.choice(len(data), n, replace=False))) if n < len(data) else data
    return dataclasses.replace(bundle, splits=splits, meta={**bundle.meta, "subsample": rows})


def plan(models: list[str], registered: list[str], weightings: list[str]) -> list[tuple[str, str, str]]:
    """``(label, model, weighting)`` runs: each requested model with fixed weights, and ``mmoe+w`` per weighting."""
    runs = []
    for m in models:
        if "+" in m:
            base, w = m.split("+", 1)
            runs.append((m, base, w))
        elif m in registered:
            runs.append((m, m, "fixed"))
        else:
            print(f"skipping {m!r}: not registered", file=sys.stderr)
    return runs


def default_models(registered: list[str], weightings: list[str]) -> list[str]:
    extra = [m for m in OPTIONAL if m in registered]
    return [*CORE, *extra, *(f"mmoe+{w}" for w in weightings if w != "fixed")]


def train_eval(bundle: DataBundle, model_name: str, params: dict[str, Any], cfg: TrainConfig) -> tuple[dict, Any]:
    """One validation-selected run (as :func:`mtlrec.experiment.run_one`), returning the trained model too."""
    seed_everything(cfg.seed)
    model = create_model(model_name, bundle, **params)
    trainer = Trainer(model, cfg)
    t0 = time.perf_counter()
    result = trainer.fit(bundle.train, bundle.valid)
    seconds = time.perf_counter() - t0
    trainer.load_best()
    row = {
        "model": model_name,
        "seed": cfg.seed,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": seconds,
        "valid": evaluate(model, bundle.valid),
        "test": evaluate(model, bundle.test),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return row, model


def dtn_importance(model: Any, bundle: DataBundle, quick: bool, out: Path) -> dict:
    """DTN's per-task permutation importance on the validation split, with its table and plot beside ``out``."""
    imp = permutation_importance(
        model, bundle.valid, n_repeats=1 if quick else 3, seed=0, max_rows=3000 if quick else 20_000
    )
    png = plot_importance(imp, out.with_name(out.stem + "_importance.png"), title="DTN, Census-Income (validation)")
    table = importance_table(imp)
    out.with_name(out.stem + "_importance.md").write_text(table + "\n")
    return {"importance": imp, "divergence": divergence(imp), "plot": str(png), "table": table}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 10; quick: 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 1024; quick: 256")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-importance", action="store_true", help="skip DTN's permutation-importance analysis")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    registered = mtlrec.list_models()
    weightings = list_weightings()
    runs = plan(parse_models(args.models, default_models(registered, weightings)), registered, weightings)
    seeds = list(range(1 if args.quick else args.seeds))
    epochs = args.epochs or (2 if args.quick else 10)
    args.batch_size = args.batch_size or (256 if args.quick else 1024)
    bundle = load_dataset("census_income", data_dir=args.data_dir, group=1)
    if args.quick:
        bundle = subsample(bundle, {"train": 10_000, "valid": 5_000, "test": 5_000})
    rows = {k: len(v) for k, v in bundle.splits.items()}
    mode = f" (QUICK: subset, 1 seed, {epochs} epochs)" if args.quick else f" ({len(seeds)} seeds, {epochs} epochs)"
    print(f"{NAME}{mode}: {bundle.name}, rows {rows}, {bundle.layout.num_fields} fields, runs {[r[0] for r in runs]}")
    results, timing, used = [], [], {}
    dtn_model = None
    for label, model, weighting in runs:
        params = {**PARAMS.get(model, COMMON), **(QUICK_PARAMS.get(model, {}) if args.quick else {})}
        used[label] = params
        for seed in seeds:
            cfg = TrainConfig(
                epochs=epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=seed,
                monitor="income.auc",
                patience=3,
                weighting=weighting,
                weighting_params=WEIGHTING_PARAMS.get(weighting, {}),
                progress=False,
                threads=args.threads,
            )
            t0 = time.perf_counter()
            try:
                row, trained = train_eval(bundle, model, params, cfg)
            except Exception as e:  # one failing model must not lose the others' results
                print(f"  {label} seed {seed}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
                continue
            row["label"] = label
            if model == "dtn" and dtn_model is None:
                dtn_model = trained
            results.append(row)
            t = {k: round(v["auc"], 4) for k, v in row["test"].items()}
            print(f"  {label} seed {seed}: test AUC {t}  ({time.perf_counter() - t0:.0f}s)", flush=True)
        done = [r for r in results if r["label"] == label]
        if done:
            timing.append(
                {
                    "model": label,
                    "train_seconds_mean": float(np.mean([r["train_seconds"] for r in done])),
                    "epochs_run_mean": float(np.mean([r["epochs_run"] for r in done])),
                    "num_parameters": done[0]["num_parameters"],
                }
            )
    summary = [s for s in summarize(results) if s["metric"] == "auc"]
    print()
    print(markdown_table(summary))
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"{NAME}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {
        "protocol": {
            "data": "census_income group 1 (income, marital); train file = train, test file split 1:1 valid/test",
            "selection": "best validation income AUC, patience 3",
            "epochs": epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "params": used,
            "weighting_params": WEIGHTING_PARAMS,
        },
        "timing": timing,
        "runs": [
            {k: r[k] for k in ("label", "seed", "best_epoch", "epochs_run", "train_seconds", "test")} for r in results
        ],
    }
    if not args.no_importance and dtn_model is not None:
        imp = dtn_importance(dtn_model, bundle, args.quick, out)
        print("\nDTN per-task permutation importance (validation, drop in AUC):\n")
        print(imp.pop("table"))
        extra["dtn_importance"] = imp
    path = write_results(NAME, command_line(), summary, args.quick, out, threads=args.threads, extra=extra)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
