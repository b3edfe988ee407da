"""Census-Income task group 1 (income > 50K, never married): DTN against the sparse-sharing and soft-sharing baselines.

Rows: ``dtn``, ``snr_trans``, ``snr_aver``, ``mssm``, ``cross_stitch``, ``sluice``, ``ml_mmoe``, ``mmoe`` (the
baseline) and MMoE under every loss-weighting strategy other than ``fixed`` (``mmoe+<weighting>``), as
``configs/bench/census_dtn_baselines.yaml`` on the harness (``mtlrec.bench``; the grid alone runs as ``mtlrec bench
configs/bench/census_dtn_baselines.yaml``). Protocol of MMoE §6.3 / PLE §5.3 (MODELS.md E.1-E.2): selection on the
validation income AUC, test evaluated once per cell.

What is specific to this benchmark: DTN's per-task permutation importance (the "divergence phenomenon", MODELS.md
C.2) on the validation split, of the seed-0 DTN at its selected epoch (reloaded from its run folder); its table
(``<out>_importance.md``) and plot (``<out>_importance.png``) are written next to the JSON, and the JSON gets a
``dtn_importance`` field.

    python benchmarks/census_dtn_baselines.py [--seeds 5] [--models dtn,mmoe] [--jobs 2 --threads 1]
    python benchmarks/census_dtn_baselines.py --quick --threads 1     # subset, 1 seed, 1 epoch: checks the pipeline
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_bench_options, base_parser, default_out, run_bench_script, run_script  # noqa: E402

from mtlrec.bench.meta import atomic_write_json  # noqa: E402
from mtlrec.experiment import load_data, load_run  # noqa: E402
from mtlrec.explain.importance import divergence, importance_table, permutation_importance, plot_importance  # noqa: E402

NAME = "census_dtn_baselines"
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "census_dtn_baselines.yaml"
IMPORTANCE_ROW = "dtn"


def importance_settings(quick: bool) -> dict[str, int]:
    """Permutation-importance budget: repeats per field and validation rows scored (smaller for ``--quick``)."""
    return {"n_repeats": 1, "max_rows": 3000} if quick else {"n_repeats": 3, "max_rows": 20_000}


def dtn_importance(run_dir: Path, data: dict[str, Any], settings: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per-task permutation importance on the validation split of the selected-epoch model of ``run_dir``."""
    model, _ = load_run(run_dir, "best")
    bundle = load_data({"data": data})
    return permutation_importance(model, bundle.valid, seed=0, **settings)


def write_importance(
    imp: dict[str, dict[str, float]], out: Path, settings: dict[str, int]
) -> tuple[dict[str, Any], str]:
    """Write the importance table (``<out>_importance.md``) and plot (``<out>_importance.png``) beside the JSON
    ``out``; returns the JSON field (importance, divergence summary, plot file, settings) and the table."""
    png = plot_importance(imp, out.with_name(out.stem + "_importance.png"), title="DTN, Census-Income (validation)")
    table = importance_table(imp)
    out.with_name(out.stem + "_importance.md").write_text(table + "\n")
    field = {
        "split": "valid",
        "seed": 0,
        **settings,
        "importance": imp,
        "divergence": divergence(imp),
        "plot": png.name,
    }
    return field, table


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--no-importance", action="store_true", help="skip DTN's permutation-importance analysis")
    add_bench_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    run = run_bench_script(args, NAME)
    cell = next((c for c in run.payload["cells"] if c["label"] == IMPORTANCE_ROW and c["seed"] == 0), None)
    if args.no_importance or cell is None or cell["status"] != "ok":
        return run.exit_code
    settings = importance_settings(args.quick)
    run_dir = run.json_paths[0].parent / cell["key"]
    imp = dtn_importance(run_dir, run.payload["config"]["data"], settings)
    out = Path(args.out) if args.out else default_out(NAME)
    field, table = write_importance(imp, out, settings)
    for path in run.json_paths:
        atomic_write_json(path, {**run.payload, "dtn_importance": field})
    print("\nDTN per-task permutation importance (seed 0, validation, drop in AUC):\n")
    print(table)
    return run.exit_code


if __name__ == "__main__":
    raise SystemExit(run_script(main))
