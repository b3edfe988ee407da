"""``mtlrec explain``: DEPHN-style interpretability outputs of a trained run, and the VG coefficient surfaces."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def explain(
    run_dir: Path | None = typer.Argument(None, help="A run folder written by `mtlrec train` (run.json, best.pt)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the JSON and PNG files"),
    vg_only: bool = typer.Option(False, "--vg-only", help="Only the virtual-gradient surfaces (no run needed)"),
    split: str = typer.Option("test", help="Split whose rows feed the data-dependent outputs"),
    checkpoint: str = typer.Option("best", help="best or last"),
    max_rows: int = typer.Option(20000, help="At most this many rows of the split are used"),
    resolution: int = typer.Option(101, help="Grid points per axis of the VG surfaces"),
) -> None:
    """Write explain outputs: VG coefficient surfaces for all eight variants (DEPHN Fig. 4), and for a run the SSG
    gate values per structure (Fig. 3a), the public/private share of the pre-sigmoid logit (Fig. 3b) and the
    learned gate values per task, as JSON + PNG.

    Examples:

      mtlrec explain --vg-only --out figs/vg

      mtlrec explain runs/ali/dephn/seed0 --out figs/dephn
    """
    from mtlrec.explain.report import explain_model, write_vg_surfaces

    files = write_vg_surfaces(out_dir, resolution)
    if vg_only:
        typer.echo(json.dumps({"out": str(out_dir), "files": sorted(files)}))
        return
    if run_dir is None:
        raise typer.BadParameter("give a RUN_DIR, or --vg-only for the surfaces alone")
    from mtlrec.data.datasets import load_dataset
    from mtlrec.experiment import load_run

    model, info = load_run(run_dir, checkpoint)
    meta = info.get("data_meta") or {}
    name, params = meta.get("dataset_name") or info.get("dataset"), meta.get("load_params")
    data = load_dataset(name, **params).splits[split] if params is not None else None
    report = explain_model(model, data, out_dir, max_rows=max_rows)
    typer.echo(json.dumps({"out": str(out_dir), "files": sorted(files) + report["files"]}))


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to the ``mtlrec`` typer app."""
    app.command("explain")(explain)
