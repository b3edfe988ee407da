"""Census-Income: each model's training time and test AUC in fp32 and in bf16, side by side (issue 14's "bf16 pays
on every model": bf16 >= 1.6x faster with test AUC within 0.002 of fp32).

Runs ``configs/bench/census_precision.yaml`` (MMoE, PLE, DEPHN, MT-PHN, DTN; group 1; the same 3 epochs in both
precisions, seed 0) on the harness. Each model is two adjacent cells, ``<model>@fp32`` and ``<model>@bf16``; with
``--jobs 2 --threads 1`` (the default here) the two train at the same time on one core each, so a machine whose
speed drifts (a shared VM host) slows both alike. Run one precision after the other instead and the ratio is the
drift's as much as bf16's: on the 2-core VM of the README, the same fp32 code ran 26 s and 32 s an epoch an hour
apart. Prints per model the seconds per training epoch in each precision, the speedup and the test AUC of both
tasks with its bf16 - fp32 difference. bf16 runs only where the CPU computes it natively (avx512_bf16 or AMX);
elsewhere the script says so and reports fp32 alone. A rerun resumes in the same run folder.

    python benchmarks/census_precision.py [--jobs 2 --threads 1] [--models dephn,dtn] [--quick]

Writes ``benchmarks/results/census_precision.json``: one row per (model, precision) with ``seconds_per_epoch``,
``epochs``, ``test`` AUCs, and in the bf16 rows ``speedup_vs_fp32`` and ``auc_diff_vs_fp32``; the harness's own
JSON goes to ``census_precision_grid.json`` beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    add_bench_options,
    base_parser,
    bf16_supported,
    command_line,
    default_out,
    markdown_table,
    run_bench_script,
    run_script,
    write_results,
)

NAME = "census_precision"
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "census_precision.yaml"
TASKS = ("income", "marital")
MODELS = ["mmoe", "ple", "dephn", "mt_phn", "dtn"]


def cell_rows(run: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Per precision and model: seconds per epoch and test AUCs of its (one-seed) cell, labelled model@precision."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in run.payload["cells"]:
        if c.get("status") != "ok":
            continue
        model, _, precision = c["label"].partition("@")
        info = run.payload["models"][c["label"]]
        epochs = int(c["epochs_run"])
        out.setdefault(precision, {})[model] = {
            "model": model,
            "precision": precision,
            "seed": c["seed"],
            "epochs": epochs,
            "seconds_per_epoch": round(float(info["train_seconds_mean"]) / epochs, 2),
            "test": {t: c["test"][t]["auc"] for t in TASKS},
        }
    return out


def compare(fp32: dict[str, dict[str, Any]], bf16: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The bf16 rows with their speedup and AUC differences against the fp32 row of the same model."""
    for label, row in bf16.items():
        ref = fp32.get(label)
        if ref is None:
            continue
        row["speedup_vs_fp32"] = round(ref["seconds_per_epoch"] / row["seconds_per_epoch"], 3)
        row["auc_diff_vs_fp32"] = {t: round(row["test"][t] - ref["test"][t], 5) for t in TASKS}
    return [r for label in fp32 for r in (fp32[label], bf16.get(label)) if r is not None]


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["precision"]): r for r in rows}
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        f, b = by.get((model, "fp32")), by.get((model, "bf16"))
        line = {
            "model": model,
            "fp32 s/epoch": f and f["seconds_per_epoch"],
            "fp32 income AUC": f and f["test"]["income"],
        }
        if b:
            line |= {
                "bf16 s/epoch": b["seconds_per_epoch"],
                "bf16 / fp32 speed": b.get("speedup_vs_fp32"),
                "bf16 income AUC": b["test"]["income"],
                "Δ income": b.get("auc_diff_vs_fp32", {}).get("income"),
                "Δ marital": b.get("auc_diff_vs_fp32", {}).get("marital"),
            }
        lines.append(line)
    return markdown_table(lines)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0])
    add_bench_options(p, DEFAULT_CONFIG)
    p.set_defaults(seeds=1, threads=1, jobs=2)
    args = p.parse_args(argv)
    precisions = ["fp32", "bf16"] if bf16_supported() else ["fp32"]
    if len(precisions) == 1:
        print("this CPU has neither avx512_bf16 nor AMX: bf16 would be emulated, so fp32 alone is reported")
    models = [m.strip() for m in args.models.split(",")] if args.models else MODELS
    args.models = ",".join(f"{m}@{prec}" for m in models for prec in precisions)
    out = args.out
    # the harness JSON beside the results, so a run written elsewhere leaves the committed files alone
    grid = Path(out).with_name(Path(out).stem + "_grid.json") if out else default_out(NAME + "_grid")
    args.out = str(grid)
    run = run_bench_script(args, NAME)
    per_precision = cell_rows(run)
    rows = compare(per_precision.get("fp32", {}), per_precision.get("bf16", {}))
    print()
    print(table(rows))
    path = write_results(NAME, command_line(), rows, args.quick, out, threads=args.threads)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
