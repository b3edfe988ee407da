"""Virtual-gradient coefficient surfaces (DEPHN Fig. 4): γ over task relevance × gate difference for each variant.

The surfaces need no trained model: they are the functions of :mod:`mtlrec.plugins.virtual_gradient` evaluated on
a grid of ``x`` (task relevance, |Pearson| or |cosine|) and ``y`` (gate difference ``min(1, |G^t − G^j|)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtlrec.plugins.virtual_gradient import VARIANTS, vg_gamma


def vg_surface(variant: str, resolution: int = 101) -> dict[str, Any]:
    """``{"x": (n,), "y": (n,), "gamma": (n_y, n_x)}`` with ``gamma[i, j] = γ(x_j, y_i)``."""
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    grid = torch.linspace(0.0, 1.0, resolution, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    gamma = vg_gamma(xx, yy, variant)
    return {"variant": variant, "x": grid.numpy(), "y": grid.numpy(), "gamma": gamma.double().numpy()}


def vg_surfaces(variants: Sequence[str] = VARIANTS, resolution: int = 101) -> dict[str, dict[str, Any]]:
    """All Fig. 4 surfaces (default: the eight variants, multiplicative a-d then additive e-h)."""
    order = [v for v in VARIANTS if v.startswith("mul")] + [v for v in VARIANTS if v.startswith("add")]
    chosen = [v for v in order if v in variants] + [v for v in variants if v not in order]
    return {v: vg_surface(v, resolution) for v in chosen}


def surface_summary(surface: dict[str, Any]) -> dict[str, float]:
    """Numbers that characterise a surface: range, mean, corners and the share of the grid where γ < 1 (shrink)."""
    g = surface["gamma"]
    return {
        "min": float(g.min()),
        "max": float(g.max()),
        "mean": float(g.mean()),
        "share_shrinking": float((g < 1).mean()),
        "at_x0_y0": float(g[0, 0]),
        "at_x1_y0": float(g[0, -1]),
        "at_x0_y1": float(g[-1, 0]),
        "at_x1_y1": float(g[-1, -1]),
    }


def surfaces_json(surfaces: dict[str, dict[str, Any]], with_grid: bool = False) -> dict[str, Any]:
    """JSON-ready form: the summary of each surface, and the grid itself when ``with_grid``."""
    out: dict[str, Any] = {}
    for v, s in surfaces.items():
        entry: dict[str, Any] = {"summary": surface_summary(s)}
        if with_grid:
            entry.update(x=np.round(s["x"], 6).tolist(), y=np.round(s["y"], 6).tolist())
            entry["gamma"] = np.round(s["gamma"], 4).tolist()
        out[v] = entry
    return out
