"""``mtlrec explain``: what a trained run's model learned (gates, SSG, logit split, permutation importance), and the
virtual-gradient coefficient surfaces."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mtlrec.errors import UserError


def explain(
    run_dir: Path | None = typer.Argument(None, help="A run folder written by `mtlrec train` (run.json, best.pt)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the JSON, Markdown and PNG files"),
    vg_only: bool = typer.Option(False, "--vg-only", help="Only the virtual-gradient surfaces (no run needed)"),
    importance: bool = typer.Option(
        False, "--importance", help="Also the per-task permutation importance (table, rank correlations, plot)"
    ),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Permutations per field for --importance"),
    split: str = typer.Option("test", help="Split whose rows feed the data-dependent outputs"),
    checkpoint: str = typer.Option("best", help="best or last"),
    max_rows: int = typer.Option(20000, "--max-rows", min=1, help="At most this many rows of the split are used"),
    resolution: int = typer.Option(101, help="Grid points per axis of the VG surfaces"),
    device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda, cuda:N or auto (any run loads anywhere)"),
) -> None:
    """Write explain outputs as JSON + PNG: for a run, the SSG gate values per structure (DEPHN Fig. 3a), the
    public/private share of the pre-sigmoid logit (Fig. 3b) and the learned gate values per task (what the model
    has), the VG coefficient surfaces of all eight variants (Fig. 4) when the model trains with virtual gradient,
    and with --importance the per-task permutation importance. A model with nothing to explain says so.

    Examples:

      mtlrec explain --vg-only --out figs/vg

      mtlrec explain runs/ali/dephn/seed0 --out figs/dephn

      mtlrec explain runs/census/mmoe/seed0 --out figs/mmoe --importance --repeats 3 --max-rows 5000

      mtlrec explain runs/census/mmoe/seed0 --out figs/mmoe --device cuda
    """
    from mtlrec.explain.report import explain_model, has_virtual_gradient, write_importance, write_vg_surfaces

    if vg_only:
        files = write_vg_surfaces(out_dir, resolution)
        typer.echo(json.dumps({"out": str(out_dir), "files": sorted(files)}))
        return
    if run_dir is None:
        raise UserError("mtlrec explain: give a RUN_DIR (a folder written by `mtlrec train`), or --vg-only")
    from mtlrec.data.datasets import load_dataset
    from mtlrec.experiment import load_run
    from mtlrec.train.device import resolve_device

    dev = resolve_device(device, where="--device")  # before any loading: a bad value fails at once
    model, info = load_run(run_dir, checkpoint)
    model.to(dev)  # the batches follow the model (explain.gates, train.trainer.predict)
    meta = info.get("data_meta") or {}
    name, params = meta.get("dataset_name") or info.get("dataset"), meta.get("load_params")
    data = None
    if params is not None:
        splits = load_dataset(name, **params).splits
        if split not in splits:
            raise UserError(f"--split: unknown split {split!r}; the run's data set has {', '.join(splits)}")
        data = splits[split]
    report = explain_model(model, data, out_dir, max_rows=max_rows)
    files = list(report["files"])
    if has_virtual_gradient(model):
        files += sorted(write_vg_surfaces(out_dir, resolution))
    if importance:
        if data is None:
            raise UserError(f"{run_dir}/run.json: --importance needs the run's data set, which it does not record")
        files += sorted(write_importance(model, data, out_dir, repeats=repeats, max_rows=max_rows))
    if not files:
        typer.echo(report.get("nothing") or f"model {report['model']!r} has nothing to explain")
        return
    typer.echo(json.dumps({"out": str(out_dir), "files": files}))


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to the ``mtlrec`` typer app."""
    app.command("explain")(explain)
