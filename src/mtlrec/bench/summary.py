"""Summaries of a grid's finished cells: mean ± std per (data set, model, task, metric, split), paired t-tests
against a baseline over common seeds, the MTL gain against a single-task model, ``bench.expected`` thresholds, and
the Markdown tables. Rows follow BENCHMARKS.md (``model, task, metric, split, mean, std, values, seeds``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mtlrec import metrics as M


def selected_epoch(row: dict[str, Any]) -> int:
    """The 1-based selected (best validation) epoch of a cell's row: the harness's ``selected_epoch`` (counted in
    the run's log), else ``run_one``'s ``best_epoch`` (1-based too)."""
    if row.get("selected_epoch") is not None:
        return int(row["selected_epoch"])
    return int(row["best_epoch"])


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status", "ok") == "ok"]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize_cells(rows: list[dict[str, Any]], splits: tuple[str, ...] = ("test", "valid")) -> list[dict[str, Any]]:
    """Quality rows: mean ± std over seeds (values in seed order) per data set, model label, task, metric, split;
    a ``dataset`` key only where the grid has data sets."""
    groups: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    for r in ok_rows(rows):
        for split in splits:
            for task, ms in (r.get(split) or {}).items():
                for metric, v in ms.items():
                    key = (r.get("dataset_label"), r["label"], task, metric, split)
                    groups.setdefault(key, []).append((int(r["seed"]), float(v)))
    out = []
    for (dataset, label, task, metric, split), vals in groups.items():
        vals.sort()
        values = [v for _, v in vals]
        out.append(
            {
                "model": label,
                **({"dataset": dataset} if dataset is not None else {}),
                "task": task,
                "metric": metric,
                "split": split,
                "mean": float(np.mean(values)),
                "std": _std(values),
                "values": values,
                "seeds": [s for s, _ in vals],
            }
        )
    return out


def paired_rows(
    summary: list[dict[str, Any]],
    reference: str | Callable[[str], str | None] | None,
    *,
    gain: bool = False,
    metrics: tuple[str, ...] | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    """Each model against ``reference`` (a label, or a function of the label giving its reference label) per
    data set, task and metric, paired over the seeds both have, with a paired t-test (``mtlrec.metrics``).

    ``gain=False``: the difference ``model − reference`` (row metric ``<metric>_diff_vs_<reference>``);
    ``gain=True``: the MTL gain of PLE §5 (``M_MTL − M_ref``, sign flipped for lower-is-better metrics; row metric
    ``mtl_gain_<metric>``). Metrics without a known direction are skipped for gains."""
    if reference is None:
        return []
    ref_of = reference if callable(reference) else (lambda _label: reference)
    by = {
        (s.get("dataset"), s["model"], s["task"], s["metric"]): s
        for s in summary
        if s["split"] == split and (metrics is None or s["metric"] in metrics)
    }
    out = []
    for (dataset, model, task, metric), s in by.items():
        ref_label = ref_of(model)
        ref = by.get((dataset, ref_label, task, metric))
        if ref is None or model == ref_label or (gain and metric not in M.HIGHER_IS_BETTER):
            continue
        seeds = sorted(set(s["seeds"]) & set(ref["seeds"]))
        if not seeds:
            continue
        a = [s["values"][s["seeds"].index(k)] for k in seeds]
        b = [ref["values"][ref["seeds"].index(k)] for k in seeds]
        values = [M.mtl_gain(metric, x, y) if gain else x - y for x, y in zip(a, b, strict=True)]
        p = M.paired_test(a, b)["p_value"]
        out.append(
            {
                "model": model,
                **({"dataset": dataset} if dataset is not None else {}),
                "task": task,
                "metric": f"mtl_gain_{metric}" if gain else f"{metric}_diff_vs_{ref_label}",
                "split": split,
                "mean": float(np.mean(values)),
                "std": _std(values),
                "values": values,
                "seeds": seeds,
                "reference": ref_label,
                "p_value": None if np.isnan(p) else float(p),
            }
        )
    return out


def check_expected(summary: list[dict[str, Any]], expected: dict[str, dict[str, float]] | None) -> list[dict]:
    """``bench.expected`` (``{label: {"task.metric": threshold}}``; a label may be ``dataset/label``) against the
    mean test metrics: ``>=`` for higher-is-better metrics, ``<=`` otherwise. A threshold whose model has no
    result yet is reported with ``passed: None``."""
    out = []
    test = [s for s in summary if s["split"] == "test"]
    for target, checks in (expected or {}).items():
        dataset, _, label = target.rpartition("/")
        for key, threshold in (checks or {}).items():
            task, _, metric = key.partition(".")
            higher = M.HIGHER_IS_BETTER.get(metric, True)
            hits = [
                s
                for s in test
                if s["model"] == label
                and s["task"] == task
                and s["metric"] == metric
                and (not dataset or s.get("dataset") == dataset)
            ]
            for s in hits or [None]:
                mean = None if s is None else s["mean"]
                passed = None if mean is None else (mean >= threshold if higher else mean <= threshold)
                out.append(
                    {
                        "model": label,
                        **({"dataset": s["dataset"]} if s is not None and "dataset" in s else {}),
                        "task": task,
                        "metric": metric,
                        "threshold": float(threshold),
                        "direction": ">=" if higher else "<=",
                        "mean": mean,
                        "seeds": [] if s is None else s["seeds"],
                        "passed": passed,
                    }
                )
    return out


def model_info(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model label (and data set): registry model, params, train settings, selected epochs (1-based), epochs
    run, mean training seconds, parameter count, over its finished cells in seed order."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(ok_rows(rows), key=lambda r: int(r["seed"])):
        key = r["label"] if r.get("dataset_label") is None else f"{r['dataset_label']}/{r['label']}"
        info = out.setdefault(
            key,
            {
                "registry_model": r["model"],
                "params": r.get("params"),
                "train": r.get("train"),
                "seeds": [],
                "best_epochs": [],
                "epochs_run": [],
                "train_seconds": [],
                "num_parameters": r.get("num_parameters"),
            },
        )
        info["seeds"].append(int(r["seed"]))
        info["best_epochs"].append(selected_epoch(r))
        info["epochs_run"].append(r["epochs_run"])
        info["train_seconds"].append(round(float(r["train_seconds"]), 2))
    for info in out.values():
        info["train_seconds_mean"] = float(np.mean(info["train_seconds"]))
    return out


def _cell(s: dict[str, Any], signed: bool = False) -> str:
    text = f"{s['mean']:+.4f}" if signed else f"{s['mean']:.4f}"
    if not signed and len(s["values"]) > 1:
        text += f" ± {s['std']:.4f}"
    if signed and s.get("p_value") is not None:
        text += f" (p={s['p_value']:.3f})"
    return text


def pivot_table(rows: list[dict[str, Any]], *, signed: bool = False) -> str:
    """Markdown: one line per model, one column per (task, metric) of ``rows`` (one data set)."""
    cols = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["task"], r["metric"]): _cell(r, signed) for r in rows}
    lines = ["| model | " + " | ".join(f"{t} {m}" for t, m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell.get((m, t, k), "–") for t, k in cols) + " |")
    return "\n".join(lines)


def markdown_report(payload: dict[str, Any]) -> str:
    """The tables of a bench JSON: test metrics, paired differences to the baseline, MTL gains, selected epochs
    and seconds, expected thresholds, failed cells."""
    rows = payload["rows"]
    datasets = list(dict.fromkeys(r.get("dataset") for r in rows)) or [None]
    parts = [
        f"## {payload['benchmark']}"
        + (" (QUICK: a pipeline check, no quality claim)" if payload.get("quick") else "")
        + (
            ""
            if payload.get("complete")
            else f" — incomplete: {payload.get('cells_done')}/{payload.get('cells_total')} cells"
        )
    ]
    for ds in datasets:
        mine = [r for r in rows if r.get("dataset") == ds and r["split"] == "test"]
        if ds is not None:
            parts.append(f"### {ds}")
        quality = [r for r in mine if r["metric"] in M.HIGHER_IS_BETTER]
        if quality:
            parts.append("Test split, mean ± std over seeds (validation-selected):\n\n" + pivot_table(quality))
        diffs = [r for r in mine if "_diff_vs_" in r["metric"]]
        if diffs:
            refs = list(dict.fromkeys(r["reference"] for r in diffs))
            ref = refs[0] if len(refs) == 1 else "each model's reference (" + ", ".join(refs) + ")"
            parts.append(
                f"Difference to {ref} (model − reference), p: paired t-test over seeds:\n\n"
                + pivot_table(diffs, signed=True)
            )
        gains = [r for r in mine if r["metric"].startswith("mtl_gain_")]
        if gains:
            parts.append(
                f"MTL gain (PLE §5) over {gains[0]['reference']}, p: paired t-test over seeds:\n\n"
                + pivot_table(gains, signed=True)
            )
    info = payload.get("models") or {}
    if info:
        lines = ["| model | selected epochs | epochs run | seconds (mean) | parameters |", "|---|---|---|---|---|"]
        for name, m in info.items():
            lines.append(
                f"| {name} | {', '.join(map(str, m['best_epochs']))} | {', '.join(map(str, m['epochs_run']))} | "
                f"{m['train_seconds_mean']:.1f} | {m.get('num_parameters') or '–'} |"
            )
        parts.append("Selected epochs (1-based) and training time per seed:\n\n" + "\n".join(lines))
    expected = payload.get("expected") or []
    if expected:
        lines = ["| model | task | metric | threshold | mean | result |", "|---|---|---|---|---|---|"]
        for e in expected:
            mean = "–" if e["mean"] is None else f"{e['mean']:.4f}"
            verdict = {True: "pass", False: "FAIL", None: "no result"}[e["passed"]]
            name = f"{e['dataset']}/{e['model']}" if e.get("dataset") else e["model"]
            lines.append(
                f"| {name} | {e['task']} | {e['metric']} | {e['direction']} {e['threshold']} | {mean} | {verdict} |"
            )
        parts.append("Expected thresholds (mean test metric):\n\n" + "\n".join(lines))
    failed = payload.get("failed") or []
    if failed:
        parts.append("Failed cells:\n\n" + "\n".join(f"- {f['key']}: {f['error']}" for f in failed))
    return "\n\n".join(parts) + "\n"
