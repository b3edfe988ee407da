"""``mtlrec report RUNS_DIR --out DIR``: Markdown and a self-contained HTML page of a folder of runs."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    runs_dir: Path = typer.Argument(..., help="A bench/train out folder (run folders with run.json below it)"),
    out: Path = typer.Option(Path("report"), help="Folder for report.md, report.html and images/"),
) -> None:
    """Results tables, learning curves of every run, explain plots and the commands, as report.md and report.html.

    Example:

      mtlrec report runs/bench/census_income --out report/
    """
    from mtlrec.bench.report import write_report

    md, page = write_report(runs_dir, out)
    typer.echo(f"wrote {md} and {page}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
