"""DML on MovieLens-1M: Shared-Bottom, MMoE and PLE, each plain, +CTFM, +GKD and +DML (CTFM + GKD).

``configs/bench/movielens_dml.yaml`` on the harness (``mtlrec.bench``), which holds the protocol (DML paper,
MODELS.md B.2-B.3): tasks like (rating >= 4, AUC) and rating (MSE); random 8:1:1 split (split seed 0, fixed);
embedding 16, towers [128, 64], experts [256, 128]; Adam lr 1e-3, batch 512, early stopping on validation like AUC
(patience 3), test evaluated once at the selected epoch. The +CTFM/+GKD/+DML runs of a seed start from the same
backbone weights as the plain run of that seed (the plug-in is built after the model).

What is specific to this benchmark: each variant is paired with ITS plain backbone (``mmoe+dml`` with ``mmoe``)
by a paired t-test over common seeds (rows ``<metric>_diff_vs_<backbone>`` with ``p_value``).

    python benchmarks/movielens_dml.py --seeds 5 --epochs 5 [--jobs 2 --threads 1]
    python benchmarks/movielens_dml.py --quick          # 10k ratings, 2 seeds, 1 epoch: exercises everything

The shared folder holds the first 487,650 ratings (users 1-2,999); with the full ratings.dat the loader uses it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_bench_options, base_parser, parse_models, run_bench_script, run_script  # noqa: E402

NAME = "movielens_dml"
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "movielens_dml.yaml"
MODELS = ["shared_bottom", "mmoe", "ple"]
VARIANTS = ["plain", "ctfm", "gkd", "dml"]


def label(model: str, variant: str) -> str:
    """The config label of a backbone's variant: ``mmoe`` (plain), ``mmoe+dml``."""
    return model if variant == "plain" else f"{model}+{variant}"


def backbone(label: str) -> str:
    """The plain backbone a label is paired with (``mmoe+dml`` → ``mmoe``)."""
    return label.split("+", 1)[0]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0], default_models=",".join(MODELS))
    p.add_argument("--variants", default=",".join(VARIANTS), help="plain,ctfm,gkd,dml (plain always runs)")
    add_bench_options(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    variants = ["plain", *(v for v in parse_models(args.variants, VARIANTS) if v != "plain")]
    args.models = ",".join(label(m, v) for m in parse_models(args.models, MODELS) for v in variants)
    return run_bench_script(args, NAME, reference=backbone).exit_code


if __name__ == "__main__":
    raise SystemExit(run_script(main))
