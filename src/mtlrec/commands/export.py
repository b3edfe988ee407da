"""``mtlrec export``: a trained run as ONNX, TorchScript or torch.export, with preprocess.json and a parity check."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mtlrec train` (run.json, best.pt)"),
    fmt: str = typer.Option(..., "--format", help="onnx, torchscript or torch_export"),
    out: Path = typer.Option(..., "--out", "-o", help="The exported file (.onnx, .pt, .pt2)"),
    checkpoint: str = typer.Option("best", help="best or last"),
    parity_rows: int = typer.Option(2048, help="Validation rows the parity check scores with both engines"),
) -> None:
    """Export the model of a run; write preprocess.json (schema, vocabularies, statistics, input and output
    names, dtypes and shapes) beside it. The export is checked against eager PyTorch on rows of the run's
    validation split (max abs difference <= 1e-5); a failed check exits with status 1 and writes nothing.

    Examples:

      mtlrec export runs/default/mmoe/seed0 --format onnx --out export/mmoe.onnx

      mtlrec export runs/census/ple/seed0 --format torchscript --out export/ple.pt --checkpoint last
    """
    from mtlrec.export.run import ParityError, export_run

    try:
        rep = export_run(run_dir, fmt, out, checkpoint=checkpoint, parity_rows=parity_rows)
    except ParityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"exported {rep['path']} ({rep['exporter']}); parity vs eager PyTorch on {rep['rows']} validation rows: "
        f"max abs diff {rep['max_abs_diff']:.2e}; {rep['preprocess']}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the ``mtlrec`` typer app."""
    app.command("export")(export)
