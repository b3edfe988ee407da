"""Matplotlib figures (Agg backend, PNG files) for the explain outputs: DEPHN Figs. 3a, 3b and 4, gate values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_vg_surfaces(surfaces: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Fig. 4: one heat map of γ per variant, x = task relevance, y = gate difference."""
    n = len(surfaces)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    im = None
    for ax, (name, s) in zip(axes.flat, surfaces.items(), strict=False):
        im = ax.imshow(s["gamma"], origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=2, cmap="viridis", aspect="auto")
        ax.set_title(name)
        ax.set_xlabel("task relevance x")
        ax.set_ylabel("gate difference y")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="γ")
    return _save(fig, path)


def plot_ssg(ssg: dict[str, np.ndarray], path: str | Path, field_names: list[str] | None = None) -> Path:
    """Fig. 3a: the SSG gate values ``G^m`` (fields × embedding dims) of each interaction structure."""
    n = len(ssg)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(3.4 * max(n, 1), 3.2), squeeze=False, constrained_layout=True)
    im = None
    for ax, (name, g) in zip(axes.flat, ssg.items(), strict=False):
        g = np.asarray(g)
        im = ax.imshow(g, vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.set_title(f"SSG gate, {name}", fontsize=9)
        ax.set_xlabel("embedding dimension")
        ax.set_ylabel("field")
        if field_names and len(field_names) == g.shape[0]:
            ax.set_yticks(range(len(field_names)), field_names, fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="G (weight of E_SA)")
    return _save(fig, path)


def plot_share(share: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Fig. 3b: the share of |public| and |private| pre-activation logit per task (stacked bars)."""
    tasks = list(share)
    pub = np.array([share[t]["public_share"] for t in tasks])
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks), 3.2))
    ax.bar(tasks, pub, label="public")
    ax.bar(tasks, 1 - pub, bottom=pub, label="private")
    ax.set_ylim(0, 1)
    ax.set_xlabel("task")
    ax.set_ylabel("share of |logit| before the sigmoid")
    ax.set_title("public vs private part of the logit", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_gates(gates: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Learned gate values, one panel per gate (titled with its task and readable structure name): heat maps of
    (public expert × mapping), or bars of the mean weight per expert for plain gates."""
    n = len(gates)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(3.2 * max(n, 1), 3.0), squeeze=False, constrained_layout=True)
    every = np.concatenate([np.ravel(np.asarray(g["values"], dtype=float)) for g in gates.values()] or [np.zeros(1)])
    lo, hi = float(every.min()), float(every.max())  # one colour scale, so tasks compare
    for ax, (name, g) in zip(axes.flat, gates.items(), strict=False):
        vals = np.atleast_2d(np.asarray(g["values"], dtype=float))
        if vals.shape[0] == 1 or vals.shape[1] == 1:
            flat = vals.ravel()
            ax.bar(range(len(flat)), flat)
            labels = g.get("experts") if vals.shape[1] == 1 else g.get("slots")
            if labels and len(labels) == len(flat):
                ax.set_xticks(range(len(flat)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_xlabel(g.get("slot_label", "expert"))
            ax.set_ylabel("mean gate weight")
        else:
            im = ax.imshow(vals, cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
            if vals.size <= 64:
                for (i, j), v in np.ndenumerate(vals):
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="w")
            ax.set_yticks(range(vals.shape[0]), g.get("experts", list(range(vals.shape[0]))), fontsize=7)
            ax.set_xticks(range(vals.shape[1]), g.get("mappings", list(range(vals.shape[1]))), fontsize=7)
            ax.set_xlabel("mapping")
            ax.set_ylabel("public expert")
            fig.colorbar(im, ax=ax, shrink=0.8, label="gate value")
        ax.set_title(name, fontsize=9)
    return _save(fig, path)
