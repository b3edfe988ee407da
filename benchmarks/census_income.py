"""Census-Income (KDD) quality benchmark: the MMoE §6.3 / PLE §5.3 protocol (MODELS.md E.1, E.2; BENCHMARKS.md).

A thin wrapper over the harness (``mtlrec.bench``) running ``configs/bench/census_income.yaml``, which holds the
protocol and every setting; the same grid runs as ``mtlrec bench configs/bench/census_income.yaml``. Protocol: the
train file (199,523 rows) trains; the test file (99,762 rows) is split 1:1 at random into validation and test with a
FIXED split seed (``--split-seed``, default 0). Task group 1: income > 50K (main task) and marital status "never
married"; group 2: education ≥ Bachelors and never married. Each (model, seed) cell stops early on, and keeps the
best epoch of, the validation main-task AUC only, and evaluates the test split once.

    python benchmarks/census_income.py [--seeds 5] [--models mmoe,ple] [--group 1] [--quick] [--out FILE]
    python benchmarks/census_income.py --jobs 2 --threads 1        # resumable: a rerun skips finished cells

Prints the tables (mean ± std per model, task and metric; differences to MMoE and the MTL gain over
``single_task`` with paired t-tests over seeds) and writes the BENCHMARKS.md JSON (``--out``, default
``benchmarks/results/census_income.json``), rewritten after every cell (``complete: false`` until done). Run
folders go to ``--runs-dir`` (default ``runs/bench/census_income``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_bench_options, base_parser, run_bench_script, run_script  # noqa: E402

NAME = "census_income"
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "census_income.yaml"
MAIN_TASK = {1: "income", 2: "education"}


def group_overrides(group: int, split_seed: int) -> list[str]:
    """Config overrides of a task group and split seed (selection on that group's main-task AUC)."""
    return [
        f"data.params.group={group}",
        f"data.params.split_seed={split_seed}",
        f"train.monitor={MAIN_TASK[group]}.auc",
        *(["bench.expected=null"] if group != 1 else []),  # the BENCHMARKS.md bars are group 1's
    ]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--group", type=int, default=1, choices=(1, 2), help="MMoE task group (default 1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed valid/test split (default 0)")
    add_bench_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    return run_bench_script(args, NAME, group_overrides(args.group, args.split_seed)).exit_code


if __name__ == "__main__":
    raise SystemExit(run_script(main))
