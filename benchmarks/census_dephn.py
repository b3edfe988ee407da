"""Census-Income (KDD), groups 1 and 2: DEPHN against MT-PHN, MMoE, PLE and single-task models, and its ablations.

The DEPHN paper's (Kong et al., IJCNN'23; MODELS.md A.3-A.5) two questions on the MMoE/PLE census protocol
(MODELS.md E.1-E.2), as ``configs/bench/census_dephn.yaml`` on the harness (``mtlrec.bench``; the same grid runs as
``mtlrec bench configs/bench/census_dephn.yaml``):

* RQ1: does DEPHN beat MT-PHN in its three Table I expert settings, MMoE, PLE and single-task models?
* RQ2: what do the virtual gradient, the explicit mapping and soft selection gating contribute
  (``dephn-no_vg``, ``dephn-no_mapping``, ``dephn-no_ssg``)?

Each group is a data set of the grid (``bench.datasets``); each (model, seed) cell stops early on the validation
main-task AUC (income in group 1, education in group 2) and evaluates the test split once.

    python benchmarks/census_dephn.py [--groups 1,2] [--seeds 5] [--models dephn,mmoe] [--jobs 2 --threads 1]
    python benchmarks/census_dephn.py --quick --threads 1      # a few minutes: subset, 1 seed, 1 epoch

Prints per group the test AUC and logloss (mean ± std), the differences to MMoE and the MTL gain over
``single_task`` with paired t-tests over seeds; writes the BENCHMARKS.md JSON (every row with its ``dataset``,
``group1`` / ``group2``), rewritten after every cell (``complete: false`` until done).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_bench_options, base_parser, run_bench_script, run_script  # noqa: E402

NAME = "census_dephn"
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "census_dephn.yaml"


def groups_override(groups: list[int], split_seed: int) -> str:
    """The ``bench.datasets`` override of the chosen task groups (one data set each)."""
    entries = ", ".join(
        f"{{label: group{g}, name: census_income, params: {{group: {g}, split_seed: {split_seed}, "
        "numeric_transform: auto}}"
        for g in groups
    )
    return f"bench.datasets=[{entries}]"


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--groups", default="1,2", help="census task groups, comma-separated (default 1,2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed valid/test split (default 0)")
    add_bench_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    groups = sorted({int(g) for g in args.groups.split(",") if g.strip()})
    if not groups or not set(groups) <= {1, 2}:
        p.error("--groups must name some of [1, 2]")
    return run_bench_script(args, NAME, [groups_override(groups, args.split_seed)]).exit_code


if __name__ == "__main__":
    raise SystemExit(run_script(main))
