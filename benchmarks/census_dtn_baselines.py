"""Census-Income task group 1 (income > 50K, never married): DTN against the sparse-sharing and soft-sharing baselines.

Rows: ``dtn``, ``snr_trans``, ``snr_aver``, ``mssm``, ``cross_stitch``, ``sluice``, ``ml_mmoe``, ``mmoe`` (the
reference) and MMoE under every loss-weighting strategy other than ``fixed`` (``mmoe+<weighting>``). The protocol
and machinery are those of ``benchmarks/census_income.py`` (MMoE §6.3 / PLE §5.3, MODELS.md E.1-E.2): the train
file trains, the test file is split 1:1 into validation and test with a fixed split seed; each (row, seed) run stops
early on and keeps the best epoch of the **validation income AUC**, and evaluates the test split once. Every row is
an entry of ``configs/census_dtn_baselines.yaml``, which inherits data, model defaults, the mmoe entry and the train
settings from ``configs/census_income.yaml``; the weighting rows carry their strategy as ``train:`` overrides.

Also DTN's per-task permutation importance (the "divergence phenomenon", MODELS.md C.2) on the validation split,
of the seed-0 DTN at its selected epoch; its table (``<out>_importance.md``) and plot (``<out>_importance.png``) are
written next to the JSON.

    python benchmarks/census_dtn_baselines.py [--seeds 5] [--models dtn,mmoe] [--jobs 2 --threads 1]
    python benchmarks/census_dtn_baselines.py --quick --threads 1     # subset, 1 seed, 1 epoch: checks the pipeline

Prints the test AUC (mean ± std over seeds) per task and the difference to MMoE with a paired t-test over seeds.
Writes the BENCHMARKS.md JSON, rewritten after every run (``complete: false`` until done): quality rows (``auc``,
``test`` and ``valid``) and ``auc_diff_vs_mmoe`` rows (``model − mmoe``, with ``p_value``), plus
``dtn_importance`` (importance per task and field, divergence summary, plot path).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from census_income import _WORKER, _run, add_run_options, execute, model_params, prepare, row_train  # noqa: E402
from common import ROOT, base_parser, default_out  # noqa: E402

from mtlrec.experiment import load_run  # noqa: E402
from mtlrec.explain.importance import divergence, importance_table, permutation_importance, plot_importance  # noqa: E402

NAME = "census_dtn_baselines"
GROUP = 1
REFERENCE = "mmoe"
IMPORTANCE_ROW = "dtn"
DEFAULT_MODELS = [
    "dtn",
    "snr_trans",
    "snr_aver",
    "mssm",
    "cross_stitch",
    "sluice",
    "ml_mmoe",
    "mmoe",
    "mmoe+equal",
    "mmoe+uncertainty",
    "mmoe+gradnorm",
    "mmoe+dwa",
    "mmoe+pcgrad",
    "mmoe+ple_dynamic",
]
DEFAULT_CONFIG = ROOT / "configs" / "census_dtn_baselines.yaml"


def importance_settings(quick: bool) -> dict[str, int]:
    """Permutation-importance budget: repeats per field and validation rows scored (smaller for ``--quick``)."""
    return {"n_repeats": 1, "max_rows": 3000} if quick else {"n_repeats": 3, "max_rows": 20_000}


def _run_job(job: tuple[str, dict[str, Any], dict[str, Any], int, dict[str, int] | None]) -> dict[str, Any]:
    """census_income's run of ``job[:4]``; when ``job[4]`` holds importance settings, the run keeps its folder so
    that the selected-epoch model can be reloaded and its per-task permutation importance on the validation split
    (seed 0) is added to the row as ``importance``."""
    *core, imp_kw = job
    if imp_kw is None:
        return _run(tuple(core))
    with tempfile.TemporaryDirectory(prefix="dtn_importance_") as tmp:
        row = _run(tuple(core), Path(tmp))
        model, _ = load_run(tmp, "best")
    row["importance"] = permutation_importance(model, _WORKER["bundle"].valid, seed=0, **imp_kw)
    return row


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
    p = base_parser(NAME, __doc__.splitlines()[0], default_models=",".join(DEFAULT_MODELS))
    p.add_argument("--no-importance", action="store_true", help="skip DTN's permutation-importance analysis")
    add_run_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    args.group = GROUP
    torch.set_num_threads(args.threads)
    ctx, seeds, quick_rows = prepare(args, DEFAULT_MODELS)
    cfg, train_raw, models = ctx["cfg"], ctx["train_raw"], ctx["models"]

    imp_kw = importance_settings(args.quick)
    wants_importance = not args.no_importance and IMPORTANCE_ROW in models and 0 in seeds
    out = Path(args.out) if args.out else default_out(NAME)
    extra: dict[str, Any] = {}
    tables: list[str] = []

    def keep_importance(row: dict[str, Any]) -> None:
        imp = row.pop("importance", None)
        if imp is not None:
            extra["dtn_importance"], table = write_importance(imp, out, imp_kw)
            tables.append(table)

    # seed-major order: an interrupted run still has every row with its first seeds
    jobs = [
        (
            name,
            model_params(cfg, name),
            row_train(cfg, name, train_raw),
            seed,
            imp_kw if wants_importance and name == IMPORTANCE_ROW and seed == 0 else None,
        )
        for seed in seeds
        for name in models
    ]
    path = execute(jobs, ctx, quick_rows, _run_job, keep_importance, name=NAME, reference=REFERENCE, extra=extra)
    if tables:
        print("\nDTN per-task permutation importance (seed 0, validation, drop in AUC):\n")
        print(tables[0])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
