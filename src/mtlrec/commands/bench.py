"""``mtlrec bench CONFIG``: a benchmark grid (models × seeds × data sets) run resumably in parallel processes."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    config: Path = typer.Argument(..., help="Benchmark config (YAML, e.g. configs/bench/census_income.yaml)"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells trained at once, each in its own worker process"),
    threads: int | None = typer.Option(None, help="Torch threads per worker (default: torch's)"),
    seeds: str | None = typer.Option(None, help="A list (0,1,2) or a count (5 = seeds 0..4); default: the config's"),
    models: str | None = typer.Option(None, help="Comma-separated model labels (default: every entry)"),
    datasets: str | None = typer.Option(
        None, help="Comma-separated bench.datasets labels (default: every data set); the others can follow later"
    ),
    quick: bool = typer.Option(False, help="Deep-merge the config's bench.quick settings (a pipeline check)"),
    out: Path | None = typer.Option(None, help="Out folder (default: out_dir, else runs/bench/<name>[-quick])"),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results JSON here"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set train.epochs=3"),
    redo_changed: bool = typer.Option(False, help="Rerun cells recorded with other settings instead of refusing"),
    ledger: Path | None = typer.Option(
        None,
        help="A copy of the finished cells' rows kept outside the out folder (commit it): read at the start, its "
        "cells counting as done, and rewritten after every cell, so a fresh machine continues the grid",
    ),
) -> None:
    """Run a benchmark grid resumably: a rerun skips finished cells and continues interrupted ones.

    Prints one line per finished cell with an ETA, then mean ± std per model, task and metric, paired t-tests
    against bench.baseline, the MTL gain against bench.single_task and the bench.expected thresholds; writes
    <out>/bench.json (BENCHMARKS.md shape). Exit status 1 when a threshold fails on a complete, non-quick run.

    Examples:

      mtlrec bench configs/bench/census_income.yaml --jobs 2 --threads 1

      mtlrec bench configs/bench/census_income.yaml --quick --models mmoe,single_task --seeds 0,1

      mtlrec bench configs/bench/claims_census.yaml --jobs 2 --threads 1 --ledger benchmarks/results/grids/claims_census.jsonl

      mtlrec bench configs/bench/claims_vg_gates.yaml --datasets corr0 --jobs 2 --threads 1
    """
    from mtlrec.bench.run import run_bench

    run = run_bench(
        config,
        out=out,
        json_out=json_out,
        jobs=jobs,
        threads=threads,
        seeds=seeds,
        models=_names(models),
        datasets=_names(datasets),
        quick=quick,
        overrides=list(set_),
        redo_changed=redo_changed,
        ledger=ledger,
        echo=typer.echo,
    )
    for e in run.failed_thresholds:
        mean = "no result" if e["mean"] is None else f"{e['mean']:.4f}"
        what = f"{e['model']} {e['task']}.{e['metric']}"
        typer.echo(f"threshold failed: {what} {mean}, expected {e['direction']} {e['threshold']}", err=True)
    raise typer.Exit(run.exit_code)


def _names(text: str | None) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
