"""``mtlrec predict``: score raw rows (or a split of the run's data set) to CSV or Parquet, streamed."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mtlrec train`"),
    output: Path = typer.Option(..., "--out", "-o", help="Scores file: .csv or .parquet"),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Score the raw rows of this CSV/Parquet file (labels not needed)"
    ),
    split: str = typer.Option("test", help="Without --file: which split of the run's data set to score"),
    keep: list[str] = typer.Option(
        [], "--keep", "-k", help="Copy this column beside the scores (repeat); with --split: row or a task's label"
    ),
    engine: str = typer.Option(
        "torch", help="torch (eager PyTorch), onnx (onnxruntime on the exported graph) or compile (torch.compile)"
    ),
    precision: str = typer.Option("fp32", help="fp32; bf16 (torch, compile) or int8 (onnx), see docs/export.md"),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]"),
    batch_rows: int = typer.Option(65536, help="Rows read, encoded and scored at a time (bounds the memory)"),
    separator: str = typer.Option(",", help="CSV separator of --file"),
    checkpoint: str = typer.Option("best", help="best or last"),
    oov_warn: float = typer.Option(0.2, help="Warn when a field's out-of-vocabulary share is above this"),
) -> None:
    """Write one score column per task (score_<task>: probability for binary tasks, value for regression; ESMM
    adds score_ctcvr), in input order, beside the --keep columns.

    Rows are read and encoded in streamed batches with the run's own preprocessing (vocabularies and statistics
    fitted on its training split), so memory stays bounded. At the end, a drift report: per categorical field the
    share of values out of vocabulary, and any column whose values were written differently from training (cast
    to the training form). --engine onnx exports the run to <run>/export/<checkpoint>.onnx once and checks it
    against PyTorch on the first batch. --precision bf16 (torch, compile: the weights cast to bf16 once) or int8
    (onnx: dynamic quantization, <run>/export/<checkpoint>.int8.onnx) score faster in less precision, checked
    against fp32 PyTorch on the first batch with their own tolerance; --engine compile is torch.compile (inductor,
    frozen weights), compiled once per run.

    Examples:

      mtlrec predict runs/default/mmoe/seed0 --out scores.parquet

      mtlrec predict runs/mine/mmoe/seed0 --file new_events.csv.gz --keep user_id --keep item_id --out scores.csv

      mtlrec predict runs/mine/mmoe/seed0 --file rows.parquet --engine onnx --out scores.parquet
    """
    from mtlrec.export.run import ParityError
    from mtlrec.export.scoring import output_format, predict_file, predict_split

    output_format(output)  # an unsupported extension fails before any work
    try:
        if file is not None:
            rep = predict_file(
                run_dir,
                file,
                output,
                keep=keep,
                engine=engine,
                device=device,
                checkpoint=checkpoint,
                batch_rows=batch_rows,
                separator=separator,
                oov_warn=oov_warn,
                precision=precision,
            )
        else:
            rep = predict_split(
                run_dir,
                split,
                output,
                engine=engine,
                device=device,
                checkpoint=checkpoint,
                batch_rows=batch_rows,
                keep=keep,
                precision=precision,
            )
    except ParityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    eng = rep["engine"] if rep["precision"] == "fp32" else f"{rep['engine']} {rep['precision']}"
    typer.echo(f"wrote {rep['rows']} rows to {rep['out']} ({eng} engine, {rep['rows_per_s']:,.0f} rows/s)")
    if rep["drift"]:
        typer.echo("out of vocabulary: " + ", ".join(f"{d['field']} {d['oov_share']:.1%}" for d in rep["drift"]))
    for w in rep["warnings"]:
        typer.echo(f"warning: {w}", err=True)


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to the ``mtlrec`` typer app."""
    app.command("predict")(predict)
