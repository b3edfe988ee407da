"""Benchmark grids on one harness: a config's models × seeds (× data sets) run in parallel worker processes,
resumable cell by cell, summarised as mean ± std with paired tests and MTL gains (``mtlrec bench``), and reports of
run folders (``mtlrec report``).

    from mtlrec.bench import plan_grid, run_grid, summarize_cells
"""

from mtlrec.bench.grid import Cell, bench_section, plan_grid, prepare_config
from mtlrec.bench.harness import GridResult, run_grid
from mtlrec.bench.summary import check_expected, paired_rows, summarize_cells

__all__ = [
    "Cell",
    "GridResult",
    "bench_section",
    "check_expected",
    "paired_rows",
    "plan_grid",
    "prepare_config",
    "run_grid",
    "summarize_cells",
]
