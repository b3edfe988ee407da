"""Write the explain outputs of a model (JSON + PNG) into a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mtlrec.explain.gates import first_batch, gate_values, logit_shares, ssg_gate_values, to_jsonable
from mtlrec.explain.vg_surface import surfaces_json, vg_surfaces


def write_vg_surfaces(out_dir: str | Path, resolution: int = 101, with_grid: bool = True) -> dict[str, Path]:
    """Fig. 4 for every variant: ``vg_surfaces.json`` (summary + grid) and ``vg_surfaces.png``."""
    from mtlrec.explain.plots import plot_vg_surfaces

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    surfaces = vg_surfaces(resolution=resolution)
    (out / "vg_surfaces.json").write_text(json.dumps(surfaces_json(surfaces, with_grid=with_grid)))
    return {
        "vg_surfaces.json": out / "vg_surfaces.json",
        "vg_surfaces.png": plot_vg_surfaces(surfaces, out / "vg_surfaces.png"),
    }


def explain_model(
    model: nn.Module, data: Any, out_dir: str | Path, *, max_rows: int = 20000, batch_size: int = 1024
) -> dict[str, Any]:
    """Everything the model supports: SSG gates (Fig. 3a), public/private logit share (Fig. 3b), learned gate
    values per task. Writes ``explain.json`` and one PNG per section; returns the JSON-ready summary."""
    from mtlrec.explain.plots import plot_gates, plot_share, plot_ssg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    report: dict[str, Any] = {"model": getattr(model, "registry_name", type(model).__name__), "files": []}
    field_names = (
        list(model.layout.field_names)[: getattr(model, "num_fields", 0)] if hasattr(model, "layout") else None
    )

    ssg = ssg_gate_values(model)
    if ssg:
        report["ssg"] = {
            name: {"per_field_mean": g.mean(1), "mean": float(g.mean()), "values": g} for name, g in ssg.items()
        }
        report["field_names"] = field_names
        plot_ssg(ssg, out / "ssg_gates.png", field_names)
        report["files"].append("ssg_gates.png")
    if hasattr(model, "logit_parts") and data is not None:
        try:
            report["logit_share"] = logit_shares(model, data, batch_size=batch_size, max_rows=max_rows)
        except ValueError as err:  # e.g. an MLP tower: the split is not defined
            report["logit_share_error"] = str(err)
        else:
            plot_share(report["logit_share"], out / "logit_share.png")
            report["files"].append("logit_share.png")
    batch = first_batch(data, min(max_rows, 2048)) if data is not None else None
    try:
        gates = gate_values(model, batch)
    except ValueError as err:
        report["gates_error"] = str(err)
    else:
        if gates:
            report["gates"] = gates
            plot_gates(gates, out / "gates.png")
            report["files"].append("gates.png")
    report["files"].append("explain.json")
    report = to_jsonable(report)
    (out / "explain.json").write_text(json.dumps(report, indent=1))
    return report
