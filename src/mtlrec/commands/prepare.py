"""``mtlrec prepare CONFIG``: run only the data step of an experiment (read, split, fit, encode, cache) and print
what came out: rows per split, every vocabulary's size and OOV rate on valid/test, label rates per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from mtlrec.data.bundle import DataBundle


def summarize_bundle(bundle: DataBundle) -> dict[str, Any]:
    """The streamed preparation's summary when there is one, else the same figures computed from the arrays
    (chunk by chunk, so a memory-mapped cache stays on disk): categorical OOV = share of id 0 per field."""
    if "summary" in bundle.meta:
        return bundle.meta["summary"]
    rows = {k: len(v) for k, v in bundle.splits.items()}
    vocab: dict[str, Any] = {}
    for j, (name, size) in enumerate(bundle.layout.categorical):
        entry: dict[str, Any] = {"size": size}
        for k in ("valid", "test"):
            if k in bundle.splits and rows[k]:
                col = bundle.splits[k].cat
                zeros = sum(
                    int((np.asarray(col[lo : lo + (1 << 20), j]) == 0).sum()) for lo in range(0, rows[k], 1 << 20)
                )
                entry[f"oov_{k}"] = round(zeros / rows[k], 6)
        vocab[name] = entry
    for m in bundle.layout.multi_valued:
        vocab[m.name] = {"size": m.vocab_size}
    tasks: dict[str, Any] = {}
    for j, t in enumerate(bundle.tasks):
        per: dict[str, Any] = {"mask": t.mask}
        for k, d in bundle.splits.items():
            m = np.asarray(d.masks[:, j], dtype=np.float64)
            space = float(m.sum())
            pos = float((np.asarray(d.labels[:, j], dtype=np.float64) * m).sum())
            per[k] = {
                "rows_in_space": int(space),
                "space_share": round(space / rows[k], 6) if rows[k] else None,
                ("positive_rate" if t.type == "binary" else "mean"): round(pos / space, 6) if space else None,
            }
        tasks[t.name] = per
    return {"rows": rows, "vocabularies": vocab, "tasks": tasks}


def format_summary(summary: dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.2f}%"

    lines = [
        "rows: " + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()),
        "",
        "| vocabulary | size | OOV valid | OOV test |",
        "|---|---|---|---|",
    ]
    for name, v in summary["vocabularies"].items():
        lines.append(f"| {name} | {v['size']:,} | {pct(v.get('oov_valid'))} | {pct(v.get('oov_test'))} |")
    lines += [
        "",
        "| task | sample space | split | rows in space | share of rows | label rate / mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in summary["tasks"].items():
        for k in summary["rows"]:
            s = t.get(k)
            if not s:
                continue
            rate = s.get("positive_rate", s.get("mean"))
            lines.append(
                f"| {name} | {t.get('mask') or 'all rows'} | {k} | {s['rows_in_space']:,} | {pct(s['space_share'])} | "
                f"{'–' if rate is None else f'{rate:.4f}'} |"
            )
    return "\n".join(lines)


def prepare(
    config: Path = typer.Argument(..., help="Experiment config (YAML); only its data section is used"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set data.params.split_seed=1"),
    force: bool = typer.Option(False, "--force", help="Rebuild the cache even if one exists for these inputs"),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary to this JSON file"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
) -> None:
    """Prepare (read, split, fit on train, encode and cache) the data of an experiment, and summarise it.

    Examples:

      mtlrec prepare configs/my_files.yaml

      mtlrec prepare configs/my_files.yaml --force --json prep.json

    The cache key covers the inputs' content (size, mtime_ns and a digest), the schema and the split; a later
    `mtlrec train` with the same data section loads the cache as memory maps.
    """
    from mtlrec.data.stream import stream_hooks
    from mtlrec.experiment import apply_overrides, load_config, load_data

    cfg = apply_overrides(load_config(config), list(set_))
    bars: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        if quiet:
            return
        from tqdm import tqdm

        bar = bars.get(phase)
        if bar is None:
            for b in bars.values():
                b.close()
            label = {"fit": "pass 1 (split, fit)", "encode": "pass 2 (encode)"}.get(phase, phase)
            bar = bars[phase] = tqdm(total=total, unit=" rows", unit_scale=True, desc=label, leave=True)
        bar.update(done - bar.n)

    with stream_hooks(progress=progress, rebuild=force):
        bundle = load_data(cfg)
    for b in bars.values():
        b.close()
    summary = summarize_bundle(bundle)
    typer.echo(format_summary(summary))
    cache = bundle.meta.get("cache")
    if cache:
        typer.echo(f"\ncache: {cache}")
    if json_out:
        json_out.write_text(
            json.dumps({"summary": summary, "cache": cache, "meta": bundle.meta.get("split")}, indent=1, default=str)
        )


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
