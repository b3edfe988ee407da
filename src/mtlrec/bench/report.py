"""``mtlrec report RUNS_DIR``: a Markdown file and one self-contained HTML page of a folder of runs.

The page holds the results tables (from ``bench.json`` where the folder is a bench out folder, else from the run
folders' ``result.json``), per-run learning curves (train loss and each task's validation metric by epoch, from
``log.jsonl``), the PNGs of a run's ``explain/`` folder, and the commands that made them (the bench JSON's
``command``; a run's ``run.json`` ``command`` where it records one). Images are embedded as base64 PNG in the
HTML (no external assets) and written beside ``report.md`` under ``images/``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlrec.bench.harness import logged_selected_epoch, read_log
from mtlrec.bench.summary import markdown_report, pivot_table, summarize_cells
from mtlrec.errors import UserError


@dataclass
class RunFolder:
    path: Path
    name: str  # relative to the runs folder, e.g. ``mmoe/seed0``
    info: dict[str, Any]
    result: dict[str, Any] | None
    log: list[dict[str, Any]]
    explain_pngs: list[Path] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_runs(root: Path) -> list[RunFolder]:
    runs = []
    for info_path in sorted(root.rglob("run.json")):
        d = info_path.parent
        runs.append(
            RunFolder(
                path=d,
                name=str(d.relative_to(root)) if d != root else d.name,
                info=_json(info_path) or {},
                result=_json(d / "result.json"),
                log=read_log(d / "log.jsonl"),
                explain_pngs=sorted((d / "explain").glob("*.png")) if (d / "explain").is_dir() else [],
            )
        )
    return runs


def _label_seed(run: RunFolder) -> tuple[str, int]:
    parts = Path(run.name).parts
    m = re.fullmatch(r"seed(\d+)", parts[-1]) if parts else None
    seed = int(m.group(1)) if m else int((run.result or {}).get("seed", run.info.get("train", {}).get("seed", 0)))
    label = "/".join(parts[:-1]) if m and len(parts) > 1 else run.name
    return label, seed


def curve_png(run: RunFolder, path: Path) -> Path | None:
    """Train loss and each task's validation metrics by epoch (1-based) of one run, as a PNG; None without a log."""
    if not run.log:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(run.log) + 1))
    tasks = list(dict.fromkeys(t for rec in run.log for t in (rec.get("valid") or {})))
    gamma = [((rec.get("model_stats") or {}).get("vg") or {}) for rec in run.log]
    panels = 1 + len(tasks) + (1 if any(gamma) else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 2.6), dpi=90, squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [rec.get("train_loss") for rec in run.log], marker="o", ms=3)
    task_loss = [rec.get("train_task_loss") for rec in run.log]
    if all(isinstance(t, dict) for t in task_loss):
        for t in task_loss[0]:
            ax.plot(epochs, [x.get(t) for x in task_loss], marker=".", lw=1, label=t)
        ax.legend(fontsize=7)
    ax.set(title="train loss", xlabel="epoch", ylabel="loss")
    best = logged_selected_epoch(run.path)
    for i, task in enumerate(tasks, 1):
        ax = axes[0][i]
        metrics = list(dict.fromkeys(m for rec in run.log for m in (rec.get("valid") or {}).get(task, {})))
        handles = []
        # the first (selection) metric on the left axis, a second one on its own right axis (scales differ)
        for k, metric in enumerate(metrics[:2]):
            target = ax if k == 0 else ax.twinx()
            values = [(rec.get("valid") or {}).get(task, {}).get(metric) for rec in run.log]
            (h,) = target.plot(epochs, values, marker="o", ms=3, color=f"C{k}", ls="-" if k == 0 else "--")
            target.set_ylabel(metric, color=f"C{k}")
            handles.append((h, metric))
        if best is not None:
            handles.append((ax.axvline(best, color="grey", ls=":", lw=1), "selected"))
        ax.set(title=f"{task}: validation", xlabel="epoch")
        ax.legend([h for h, _ in handles], [n for _, n in handles], fontsize=7)
    if any(gamma):  # the VG plug-in's Γ per epoch (log.jsonl model_stats.vg): mean per task, min-max band
        ax = axes[0][-1]
        for k, task in enumerate(dict.fromkeys(t for g in gamma for t in (g.get("gamma_mean") or {}))):
            mean, low, high = (
                [(g.get(key) or {}).get(task) for g in gamma] for key in ("gamma_mean", "gamma_min", "gamma_max")
            )
            ax.plot(epochs, mean, marker="o", ms=3, color=f"C{k}", label=task)
            if all(v is not None for v in low + high):
                ax.fill_between(epochs, low, high, color=f"C{k}", alpha=0.15)
        applied = "applied" if any(g.get("applied") for g in gamma) else "measured only"
        ax.set(title=f"VG Γ ({applied})", xlabel="epoch", ylabel="Γ")
        ax.legend(fontsize=7)
    for row in axes:
        for a in row:
            a.xaxis.get_major_locator().set_params(integer=True)
            a.grid(alpha=0.3)
    fig.suptitle(run.name, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def results_markdown(root: Path, runs: list[RunFolder]) -> tuple[str, list[str]]:
    """The tables and the commands: the bench JSON's where there is one, else a test table of the runs."""
    bench = _json(root / "bench.json")
    commands = []
    if isinstance(bench, dict) and "rows" in bench:
        commands.append(bench.get("command", ""))
        return markdown_report(bench), [c for c in commands if c]
    rows = []
    for run in runs:
        if run.result:
            label, seed = _label_seed(run)
            rows.append({**run.result, "label": label, "seed": seed, "status": "ok"})
    for run in runs:
        if run.info.get("command"):
            commands.append(run.info["command"])
    if not rows:
        return "No finished runs (no result.json) yet.\n", list(dict.fromkeys(commands))
    test = [s for s in summarize_cells(rows, splits=("test",))]
    text = "Test split, mean ± std over seeds (validation-selected):\n\n" + pivot_table(test) + "\n"
    return text, list(dict.fromkeys(commands))


def _md_to_html(md: str) -> str:
    """The small Markdown subset of the tables: headings, pipe tables, bullet lines, paragraphs."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, body = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>")
            out.append(
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                + "</tbody></table>"
            )
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{html.escape(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
        i += 1
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.1em}
.run{margin-bottom:1.5em}figure{margin:.4em 0}figcaption{font-size:12px;color:#666}
"""


def write_report(runs_dir: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (images under ``images/``) and a self-contained ``report.html`` into ``out``."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such runs folder")
    runs = find_runs(root)
    bench = _json(root / "bench.json")
    if not runs and not isinstance(bench, dict):
        raise UserError(f"{root}: holds no run folders (no run.json below it) and no bench.json")
    out = Path(out)
    images = out / "images"
    title = f"mtlrec report: {bench['benchmark']}" if isinstance(bench, dict) else f"mtlrec report: {root.name}"
    tables, commands = results_markdown(root, runs)

    md = [f"# {title}", "", f"Runs folder: `{root}` ({len(runs)} runs)", ""]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Runs folder: <code>{html.escape(str(root))}</code> ({len(runs)} runs)</p>",
    ]
    if commands:
        md += ["## Commands", "", *[f"    {c}" for c in commands], ""]
        body += ["<h2>Commands</h2>", *[f"<pre>{html.escape(c)}</pre>" for c in commands]]
    md += ["## Results", "", tables]
    body += ["<h2>Results</h2>", _md_to_html(tables)]

    md += [
        "## Learning curves",
        "",
        "Train loss and validation metrics by epoch (1-based); dotted: the selected epoch.",
        "",
    ]
    body += [
        "<h2>Learning curves</h2>",
        "<p>Train loss and validation metrics by epoch (1-based); dotted: the selected epoch.</p>",
    ]
    for i, run in enumerate(runs):
        png = curve_png(run, images / f"curve_{i:03d}.png")
        explain = run.explain_pngs
        if png is None and not explain:
            continue
        md.append(f"### {run.name}\n")
        body.append(f'<div class="run"><h3>{html.escape(run.name)}</h3>')
        if run.info.get("model"):
            what = f"model {run.info['model']}, params {json.dumps(run.info.get('params', {}), default=str)}"
            md.append(what + "\n")
            body.append(f"<p>{html.escape(what)}</p>")
        for img in ([png] if png else []) + explain:
            rel = img.relative_to(out) if img.is_relative_to(out) else None
            if rel is None:  # an explain plot: copied beside the report
                rel = Path("images") / f"explain_{i:03d}_{img.name}"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(img.read_bytes())
            caption = "learning curves" if img == png else f"explain/{img.name}"
            md.append(f"![{caption}]({rel.as_posix()})\n")
            data = base64.b64encode(img.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        body.append("</div>")
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n")
    html_path.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    return md_path, html_path
