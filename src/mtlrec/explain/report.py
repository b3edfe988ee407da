"""Write the explain outputs of a model (JSON + PNG) into a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mtlrec.explain.gates import first_batch, gate_values, logit_shares, ssg_gate_values, to_jsonable
from mtlrec.explain.vg_surface import surfaces_json, vg_surfaces
from mtlrec.models.capabilities import LogitParts


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


def has_virtual_gradient(model: nn.Module) -> bool:
    """Whether the virtual-gradient plug-in is attached to ``model`` (its VG surfaces then belong to the explain)."""
    return "virtual_gradient" in (getattr(model, "plugin_specs", None) or {})


def explain_model(
    model: nn.Module, data: Any, out_dir: str | Path, *, max_rows: int = 20000, batch_size: int = 1024
) -> dict[str, Any]:
    """Everything the model supports: SSG gates (Fig. 3a), public/private logit share (Fig. 3b), learned gate
    values per task. Writes ``explain.json`` and one PNG per section and returns the JSON-ready summary; a model
    with nothing to explain (no gates, no SSG, no logit split, e.g. ESMM) writes nothing and returns a report
    whose ``files`` is empty and whose ``nothing`` says why."""
    from mtlrec.explain.plots import plot_gates, plot_share, plot_ssg

    out = Path(out_dir)
    model.eval()
    name = getattr(model, "registry_name", "") or type(model).__name__
    report: dict[str, Any] = {"model": name, "tasks": list(getattr(model, "task_names", [])), "files": []}
    layout = getattr(model, "layout", None)
    field_names = list(layout.field_names)[: model.num_fields] if layout is not None else None

    ssg = ssg_gate_values(model)
    if ssg:
        out.mkdir(parents=True, exist_ok=True)
        report["ssg"] = {
            name: {"per_field_mean": g.mean(1), "mean": float(g.mean()), "values": g} for name, g in ssg.items()
        }
        report["field_names"] = field_names
        plot_ssg(ssg, out / "ssg_gates.png", field_names)
        report["files"].append("ssg_gates.png")
    if isinstance(model, LogitParts) and data is not None:
        try:
            report["logit_share"] = logit_shares(model, data, batch_size=batch_size, max_rows=max_rows)
        except ValueError as err:  # e.g. an MLP tower: the split is not defined
            report["logit_share_error"] = str(err)
        else:
            out.mkdir(parents=True, exist_ok=True)
            plot_share(report["logit_share"], out / "logit_share.png")
            report["files"].append("logit_share.png")
    batch = first_batch(data, min(max_rows, 2048)) if data is not None else None
    try:
        gates = gate_values(model, batch)
    except ValueError as err:
        report["gates_error"] = str(err)
    else:
        if gates:
            out.mkdir(parents=True, exist_ok=True)
            report["gates"] = gates
            plot_gates(gates, out / "gates.png")
            report["files"].append("gates.png")
    if not report["files"] and not any(k.endswith("_error") for k in report):
        report["nothing"] = f"model {name!r} has nothing to explain: no gates, no soft selection gating, no logit split"
        return report
    out.mkdir(parents=True, exist_ok=True)
    report["files"].append("explain.json")
    report = to_jsonable(report)
    (out / "explain.json").write_text(json.dumps(report, indent=1))
    return report


def write_importance(
    model: nn.Module, data: Any, out_dir: str | Path, *, repeats: int = 3, max_rows: int | None = 20000, seed: int = 0
) -> dict[str, Path]:
    """Per-task permutation importance (:mod:`mtlrec.explain.importance`): ``importance.json`` (mean, spread,
    ranks, Spearman rank correlations between tasks), ``importance.md`` (the table and the correlation summary)
    and ``importance.png`` (normalised importances and the rank of every field per task)."""
    from mtlrec.explain.importance import divergence, importance_table, permutation_importance_detail, plot_importance

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detail = permutation_importance_detail(model, data, n_repeats=repeats, seed=seed, max_rows=max_rows)
    div = divergence(detail["mean"])
    name = getattr(model, "registry_name", "") or type(model).__name__
    summary = {**{k: v for k, v in detail.items() if k != "values"}, **div}
    (out / "importance.json").write_text(json.dumps(to_jsonable(summary), indent=1))
    metric = ", ".join(f"{t}: {m}" for t, m in detail["metric"].items())
    head = f"# Permutation importance: {name}\n\nDrop in each task's metric ({metric}) when one field is shuffled; "
    head += f"{detail['rows']} rows, {repeats} repeats.\n\n"
    (out / "importance.md").write_text(head + importance_table(detail["mean"]) + "\n")
    plot_importance(detail["mean"], out / "importance.png", title=f"{name}: per-task permutation importance")
    return {f: out / f for f in ("importance.json", "importance.md", "importance.png")}
