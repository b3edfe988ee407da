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
    precision: str = typer.Option(
        "fp32", help="fp32; bf16 (torchscript, torch_export: weights cast once) or int8 (onnx: dynamic quantization)"
    ),
    quantize: str | None = typer.Option(None, help="int8: the same as --precision int8 (onnx only)"),
) -> None:
    """Export the model of a run; write preprocess.json (schema, vocabularies, statistics, input and output
    names, dtypes and shapes) beside it. The export is checked against eager PyTorch on rows of the run's
    validation split (max abs difference <= 1e-5); a failed check exits with status 1 and writes nothing.
    Reduced precision (--precision bf16 / int8) is checked against fp32 eager PyTorch with its own tolerance (max
    and mean abs difference, validation AUC difference of each binary task <= 0.002; docs/export.md).

    Examples:

      mtlrec export runs/default/mmoe/seed0 --format onnx --out export/mmoe.onnx

      mtlrec export runs/census/ple/seed0 --format torchscript --out export/ple.pt --checkpoint last

      mtlrec export runs/default/mmoe/seed0 --format onnx --quantize int8 --out export/mmoe.int8.onnx
    """
    from mtlrec.errors import UserError
    from mtlrec.export.run import ParityError, export_run

    if quantize is not None:
        if quantize != "int8":
            raise UserError(f"--quantize must be int8, got {quantize!r}")
        if precision not in ("fp32", "int8"):
            raise UserError(f"--quantize int8 contradicts --precision {precision}; give one of them")
        precision = "int8"
    try:
        rep = export_run(run_dir, fmt, out, checkpoint=checkpoint, parity_rows=parity_rows, precision=precision)
    except ParityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    figures = f"max abs diff {rep['max_abs_diff']:.2e}"
    if precision != "fp32":
        figures += f", mean abs diff {rep['mean_abs_diff']:.2e}"
        if "auc_diff" in rep:
            figures += f", AUC diff {rep['auc_diff']:.2e}"
    what = rep["exporter"] if precision == "fp32" else f"{rep['exporter']}, {precision}"
    typer.echo(
        f"exported {rep['path']} ({what}); parity vs eager PyTorch (fp32) on {rep['rows']} validation rows: "
        f"{figures}; {rep['preprocess']}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the ``mtlrec`` typer app."""
    app.command("export")(export)
