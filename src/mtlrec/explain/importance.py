"""Per-task permutation feature importance and the "divergence phenomenon" (DTN, arXiv 2408.11611; MODELS.md C.2).

DTN motivates task-specific feature interactions by showing that one feature can matter very differently to
different tasks. The paper's importance method is not known; [A] we use permutation importance (Breiman 2001;
Fisher et al. 2019) per task on the validation split: the drop in the task's metric when one field's encoded column
is shuffled across rows (the link between that field and everything else, labels included, is broken while its
marginal distribution is kept). Positive = the field helps the task; the drop is signed so that larger is more
important for lower-is-better metrics too. A multi-valued field's whole id list moves as one unit.

The divergence between tasks is summarised by the Spearman rank correlation of the tasks' importance vectors and,
per field, the spread of its rank across tasks; :func:`plot_importance` draws both the normalised importances and
the rank of every field per task (a bump chart whose crossing lines are the divergence).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtlrec import metrics as M  # noqa: E402
from mtlrec.data.preprocess import EncodedData  # noqa: E402
from mtlrec.models.base import MultiTaskModel  # noqa: E402
from mtlrec.train.trainer import predict  # noqa: E402


def _field_columns(data: EncodedData) -> list[tuple[str, str, Any]]:
    """``(field, kind, key)`` for every field, in the layout's field order."""
    lay = data.layout
    cols: list[tuple[str, str, Any]] = [(n, "cat", k) for k, (n, _) in enumerate(lay.categorical)]
    cols += [(m.name, "multi", m.name) for m in lay.multi_valued]
    cols += [(n, "num", k) for k, n in enumerate(lay.numeric)]
    return cols


def permute_field(data: EncodedData, kind: str, key: Any, perm: np.ndarray) -> EncodedData:
    """A shallow copy of ``data`` whose one field column is reordered by ``perm`` (labels and other fields kept)."""
    if kind == "cat":
        cat = np.array(data.cat, copy=True)
        cat[:, key] = cat[perm, key]
        return dataclasses.replace(data, cat=cat)
    if kind == "num":
        num = np.array(data.num, copy=True)
        num[:, key] = num[perm, key]
        return dataclasses.replace(data, num=num)
    multi = dict(data.multi)
    multi[key] = np.asarray(data.multi[key])[perm]
    return dataclasses.replace(data, multi=multi)


def _scores(model: MultiTaskModel, data: EncodedData, metrics: dict[str, str], batch_size: int) -> dict[str, float]:
    preds = predict(model, data, batch_size)
    labels, masks = np.asarray(data.labels), np.asarray(data.masks)
    out = {}
    for j, t in enumerate(model.task_names):
        keep = masks[:, j] > 0
        out[t] = M.compute(metrics[t], labels[keep, j], preds[t][keep])
    return out


def permutation_importance_detail(
    model: MultiTaskModel,
    data: Any,
    n_repeats: int = 3,
    seed: int = 0,
    *,
    metric: str | dict[str, str] | None = None,
    batch_size: int = 8192,
    max_rows: int | None = None,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    """Permutation importance with its spread: ``{"baseline": {task: value}, "metric": {task: name},
    "mean": {task: {field: drop}}, "std": {...}, "values": {task: {field: [drop per repeat]}}, "rows": n}``.

    ``data``: an :class:`EncodedData` split, or a data bundle (its validation split is used). ``metric``: one metric
    for all tasks, or per task; default each task's first metric. ``max_rows``: a random subset (drawn from
    ``seed``) for speed. Each repeat draws one permutation of the rows and applies it to one field at a time.
    """
    if not isinstance(data, EncodedData):
        data = data.valid
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be at least 1, got {n_repeats}")
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(data) > max_rows:
        data = data.take(np.sort(rng.choice(len(data), max_rows, replace=False)))
    tasks = model.tasks
    if metric is None:
        metrics = {t.name: t.metrics[0] for t in tasks}
    elif isinstance(metric, str):
        metrics = {t.name: metric for t in tasks}
    else:
        metrics = dict(metric)
    cols = _field_columns(data)
    if fields is not None:
        unknown = set(fields) - {c[0] for c in cols}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; the data has {[c[0] for c in cols]}")
        cols = [c for c in cols if c[0] in fields]
    base = _scores(model, data, metrics, batch_size)
    sign = {t: 1.0 if M.higher_is_better(m) else -1.0 for t, m in metrics.items()}
    values: dict[str, dict[str, list[float]]] = {t.name: {c[0]: [] for c in cols} for t in tasks}
    for _ in range(n_repeats):
        perm = rng.permutation(len(data))
        for name, kind, key in cols:
            s = _scores(model, permute_field(data, kind, key, perm), metrics, batch_size)
            for t in values:
                values[t][name].append(sign[t] * (base[t] - s[t]))
    return {
        "baseline": base,
        "metric": metrics,
        "mean": {t: {f: float(np.mean(v)) for f, v in d.items()} for t, d in values.items()},
        "std": {t: {f: float(np.std(v)) for f, v in d.items()} for t, d in values.items()},
        "values": values,
        "rows": len(data),
        "n_repeats": n_repeats,
        "seed": seed,
    }


def permutation_importance(
    model: MultiTaskModel, data: Any, n_repeats: int = 3, seed: int = 0, **kw: Any
) -> dict[str, dict[str, float]]:
    """``{task: {field: mean drop in the task's metric}}`` when the field is permuted (see
    :func:`permutation_importance_detail` for the options and the spread)."""
    return permutation_importance_detail(model, data, n_repeats, seed, **kw)["mean"]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = most important; ties get their average rank."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tie = values == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def divergence(importance: dict[str, dict[str, float]]) -> dict[str, Any]:
    """How differently the tasks rank the fields: per-task ranks, pairwise Spearman correlations, and fields
    sorted by the spread (max − min) of their rank across tasks."""
    tasks = list(importance)
    fields = list(importance[tasks[0]])
    mat = np.array([[importance[t][f] for f in fields] for t in tasks])
    ranks = {t: dict(zip(fields, _ranks(mat[i]).tolist(), strict=True)) for i, t in enumerate(tasks)}
    spearman: dict[str, float] = {}
    for a in range(len(tasks)):
        for b in range(a + 1, len(tasks)):
            ra, rb = _ranks(mat[a]), _ranks(mat[b])
            c = float(np.corrcoef(ra, rb)[0, 1]) if len(fields) > 1 and ra.std() > 0 and rb.std() > 0 else float("nan")
            spearman[f"{tasks[a]}~{tasks[b]}"] = c
    spread = {f: max(ranks[t][f] for t in tasks) - min(ranks[t][f] for t in tasks) for f in fields}
    return {
        "ranks": ranks,
        "spearman": spearman,
        "rank_spread": dict(sorted(spread.items(), key=lambda kv: -kv[1])),
    }


def importance_table(importance: dict[str, dict[str, float]], digits: int = 4) -> str:
    """Markdown table: one row per field (sorted by the first task's importance), ``drop (rank)`` per task, and
    the field's rank spread across tasks."""
    tasks = list(importance)
    div = divergence(importance)
    fields = sorted(importance[tasks[0]], key=lambda f: -importance[tasks[0]][f])
    head = "| field | " + " | ".join(f"{t} drop (rank)" for t in tasks) + " | rank spread |"
    sep = "|---|" + "---|" * (len(tasks) + 1)
    rows = [head, sep]
    for f in fields:
        cells = [f"{importance[t][f]:.{digits}f} ({div['ranks'][t][f]:g})" for t in tasks]
        rows.append(f"| {f} | " + " | ".join(cells) + f" | {div['rank_spread'][f]:g} |")
    corr = ", ".join(f"{k}: {v:.3f}" for k, v in div["spearman"].items())
    return "\n".join(rows) + (f"\n\nSpearman rank correlation between tasks: {corr}" if corr else "")


def plot_importance(importance: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Two panels: (left) each task's importances divided by its largest absolute value, grouped by field;
    (right) each field's rank per task, lines joining the same field (crossings show the divergence)."""
    tasks = list(importance)
    fields = sorted(importance[tasks[0]], key=lambda f: -importance[tasks[0]][f])
    div = divergence(importance)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(11, max(3.0, 0.35 * len(fields) + 1.5)), constrained_layout=True, width_ratios=[3, 2]
    )
    y = np.arange(len(fields))
    h = 0.8 / len(tasks)
    for i, t in enumerate(tasks):
        v = np.array([importance[t][f] for f in fields])
        scale = np.abs(v).max() or 1.0
        ax1.barh(y + (i - (len(tasks) - 1) / 2) * h, v / scale, height=h, label=t)
    ax1.set_yticks(y, fields)
    ax1.invert_yaxis()
    ax1.axvline(0, color="k", lw=0.6)
    ax1.set_xlabel("permutation importance / task max")
    ax1.legend(fontsize=8)
    ax1.set_title(title or "per-task permutation importance")
    xs = np.arange(len(tasks))
    for f in fields:
        ax2.plot(xs, [div["ranks"][t][f] for t in tasks], marker="o", lw=1.2)
        ax2.annotate(f, (xs[-1], div["ranks"][tasks[-1]][f]), xytext=(4, 0), textcoords="offset points", fontsize=7)
        ax2.annotate(f, (xs[0], div["ranks"][tasks[0]][f]), xytext=(-4, 0), textcoords="offset points", fontsize=7,
                     ha="right")  # fmt: skip
    ax2.set_xticks(xs, tasks)
    ax2.set_ylim(len(fields) + 0.5, 0.5)
    ax2.set_xlim(-0.6, len(tasks) - 0.4)
    ax2.set_ylabel("rank (1 = most important)")
    corr = "\n".join(f"Spearman ρ({k}) = {v:.2f}" for k, v in div["spearman"].items())
    ax2.set_title(f"rank per task\n{corr}", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
