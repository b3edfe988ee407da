"""``mtlrec bench`` as a function: a config → its grid run resumably into an out folder → the BENCHMARKS.md JSON
(rewritten after every cell, ``complete: false`` until every cell is done) and the Markdown tables."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlrec.bench.grid import Cell, bench_section, parse_seeds, plan_grid, prepare_config
from mtlrec.bench.harness import GridResult, run_grid
from mtlrec.bench.meta import atomic_write_json, git_commit, machine_info, mtlrec_version, utc_now
from mtlrec.bench.summary import (
    check_expected,
    markdown_report,
    model_info,
    paired_rows,
    selected_epoch,
    summarize_cells,
)

BENCH_JSON = "bench.json"


@dataclass
class BenchRun:
    payload: dict[str, Any]
    json_paths: list[Path]
    result: GridResult

    @property
    def failed_thresholds(self) -> list[dict[str, Any]]:
        return [e for e in self.payload["expected"] if e["passed"] is False]

    @property
    def exit_code(self) -> int:
        """1 when an expected threshold fails on a complete, non-quick run; else 0."""
        p = self.payload
        return 1 if p["complete"] and not p["quick"] and self.failed_thresholds else 0


def default_out(cfg: dict[str, Any], quick: bool) -> Path:
    """``out_dir`` of the config, else ``runs/bench/<name>``; ``-quick`` appended under ``--quick``."""
    base = Path(cfg.get("out_dir") or Path("runs") / "bench" / str(cfg.get("name") or "bench"))
    return base.with_name(base.name + "-quick") if quick else base


def build_payload(
    cfg: dict[str, Any],
    cells: list[Cell],
    result: GridResult,
    *,
    command: str,
    quick: bool,
    jobs: int,
    threads: int | None,
    reference: str | Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """The BENCHMARKS.md JSON of the recorded cells: quality rows (test, valid), ``<metric>_diff_vs_<baseline>``
    rows (``reference`` overrides ``bench.baseline``: a label or a function of the label), ``mtl_gain_<metric>``
    rows against ``bench.single_task``, per-model selected epochs and seconds, thresholds, failed cells."""
    bench = bench_section(cfg)
    summary = summarize_cells(result.rows)
    baseline = reference if reference is not None else bench.get("baseline")
    diffs = paired_rows(summary, baseline)
    gains = paired_rows(summary, bench.get("single_task"), gain=True)
    expected = check_expected(summary, bench.get("expected"))
    if result.complete:  # every cell is done: a threshold of a model in the grid without a result names no task
        labels = {c.label for c in cells}
        expected = [{**e, "passed": False} if e["passed"] is None and e["model"] in labels else e for e in expected]
    return {
        "benchmark": str(cfg.get("name") or "bench"),
        "command": command,
        "created": utc_now(),
        "mtlrec_version": mtlrec_version(),
        "git_commit": git_commit(),
        "machine": machine_info((threads or 1) * max(jobs, 1) if threads else None),
        "quick": bool(quick),
        "complete": result.complete,
        "cells_total": len(cells),
        "cells_done": sum(r.get("status") == "ok" for r in result.rows),
        "rows": summary + diffs + gains,
        "baseline": baseline if isinstance(baseline, str) else None,
        "single_task": bench.get("single_task"),
        "expected": expected,
        "models": model_info(result.rows),
        "cells": [
            {
                k: r.get(k)
                for k in (
                    "key",
                    "label",
                    "model",
                    "dataset_label",
                    "seed",
                    "status",
                    "error",
                    "best_epoch",
                    "epochs_run",
                    "seconds",
                    "valid",
                    "test",
                    "resumed",
                    "git_commit",
                    "epoch_stats",
                )
                if k in r
            }
            | ({"best_epoch": selected_epoch(r)} if r.get("status") == "ok" else {})
            for r in result.rows
        ],
        "failed": [{"key": r["key"], "error": r.get("error")} for r in result.failed],
        "datasets": dataset_meta(result.rows),
        "parallel": {"jobs": jobs, "threads_per_job": threads},
        "wall_seconds_this_call": round(result.wall_seconds, 1),
        "config": {k: v for k, v in cfg.items() if k != "bench"} | {"bench": bench},
    }


def dataset_meta(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The data set record (``meta``: e.g. Criteo-R/UR's measured label correlations) of each data set label
    (``"_"`` for the config's one data set), from its first finished cell."""
    out: dict[str, Any] = {}
    for r in rows:
        if r.get("status") == "ok" and isinstance(r.get("data"), dict):
            out.setdefault(r.get("dataset_label") or "_", r["data"])
    return out


def run_bench(
    config: str | Path | dict[str, Any],
    *,
    out: str | Path | None = None,
    json_out: str | Path | None = None,
    jobs: int = 1,
    threads: int | None = None,
    seeds: str | list[int] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    quick: bool = False,
    overrides: list[str] | None = None,
    redo_changed: bool = False,
    ledger: str | Path | None = None,
    command: str | None = None,
    reference: str | Callable[[str], str | None] | None = None,
    echo: Callable[[str], None] = print,
    prepared: bool = False,
) -> BenchRun:
    """Plan, run (resumably) and summarise a benchmark config; the JSON goes to ``<out>/bench.json`` and, when
    given, ``json_out``, rewritten after every cell; ``ledger``: a results file read at the start and rewritten
    after every cell (:class:`mtlrec.bench.harness.Ledger`). Returns the payload and the exit code to use. ``prepared``:
    ``config`` is a dict already through :func:`prepare_config` (quick settings merged, overrides applied)."""
    cfg = config if prepared else prepare_config(config, overrides=overrides, quick=quick)
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) or seeds is None else list(seeds)
    cells = plan_grid(cfg, seeds=seed_list, models=models, datasets=datasets)
    out = Path(out) if out else default_out(cfg, quick)
    paths = [out / BENCH_JSON, *([Path(json_out)] if json_out else [])]
    command = command or shlex.join(["mtlrec", *sys.argv[1:]])
    state: dict[str, Any] = {}

    def write(result: GridResult) -> None:
        state["payload"] = build_payload(
            cfg, cells, result, command=command, quick=quick, jobs=jobs, threads=threads, reference=reference
        )
        for p in paths:
            atomic_write_json(p, state["payload"])

    result = run_grid(
        cells, out, jobs=jobs, threads=threads, redo_changed=redo_changed, ledger=ledger, echo=echo, on_update=write
    )
    write(result)
    echo("\n" + markdown_report(state["payload"]))
    echo("wrote " + ", ".join(str(p) for p in paths))
    return BenchRun(state["payload"], paths, result)
