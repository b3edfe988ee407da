"""Experiments: a config (data × models × seeds × training settings) run into one results row per run.

A config is a dict (or YAML file)::

    name: census_mmoe
    data: {name: census_income, params: {group: 1}}
    models:
      - {name: mmoe, params: {num_experts: 8, expert_hidden: [64]}}
      - {name: ple}
    model_defaults: {embedding_dim: 16}
    train: {epochs: 10, batch_size: 1024, monitor: income.auc}
    seeds: [0, 1, 2]
    out_dir: runs/census_mmoe

Each run writes ``out_dir/<model>/seed<k>/`` (``run.json``, checkpoints, ``log.jsonl``) and appends one line to
``out_dir/results.jsonl``. Model selection uses the validation split; the test split is evaluated once, at the
end, with the best validation weights.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mtlrec.data.bundle import DataBundle
from mtlrec.data.datasets import load_dataset
from mtlrec.data.layout import FeatureLayout
from mtlrec.models.registry import create_model
from mtlrec.schema import TaskSpec
from mtlrec.train import distributed
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

DEFAULT_CONFIG: dict[str, Any] = {
    "name": "synthetic_mmoe_vs_shared_bottom",
    "data": {"name": "synthetic", "params": {"n": 60_000, "correlation": 0.5, "task_type": "regression"}},
    "model_defaults": {"numeric_mode": "dense", "tower_hidden": [8]},
    "models": [
        {"name": "shared_bottom", "params": {"bottom_hidden": [113]}},
        {"name": "mmoe", "params": {"num_experts": 8, "expert_hidden": [16]}},
    ],
    "train": {"epochs": 8, "batch_size": 256, "lr": 1e-3, "patience": 3, "monitor": "mean.mse"},
    "seeds": [0, 1],
    "out_dir": "runs/default",
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_config(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config must be a mapping, got {type(cfg).__name__}")
    base = cfg.pop("base", None)
    if base:
        merged = load_config(path.parent / base)
        return deep_update(merged, cfg)
    return cfg


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (value parsed as YAML) applied to the config, e.g. ``train.epochs=3``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def train_config(raw: dict[str, Any], seed: int) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown train settings {sorted(unknown)}; valid: {sorted(known)}")
    return TrainConfig(**{**raw, "seed": seed})


def load_data(cfg: dict[str, Any]) -> DataBundle:
    data = cfg.get("data") or {}
    if "name" not in data:
        raise ValueError("config needs data.name (see `mtlrec datasets`)")
    return load_dataset(data["name"], **(data.get("params") or {}))


def run_one(
    bundle: DataBundle,
    model_name: str,
    params: dict[str, Any],
    train: TrainConfig,
    out_dir: Path | None,
    tasks: list[TaskSpec] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one model with one seed; returns its results row (validation-selected, test evaluated once)."""
    seed_everything(train.seed)
    tasks = tasks or bundle.tasks
    model = create_model(model_name, bundle.layout, tasks, **copy.deepcopy(params))
    if out_dir and distributed.is_writer():  # only rank 0 writes files
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(out_dir, bundle, model_name, params, train, tasks)
    trainer = Trainer(model, train, out_dir)
    if resume:
        trainer.resume()
    t0 = time.perf_counter()
    result = trainer.fit(bundle.train, bundle.valid)
    seconds = time.perf_counter() - t0
    trainer.load_best()
    valid = evaluate(model, bundle.valid, train.eval_batch_size, train.precision)
    test = evaluate(model, bundle.test, train.eval_batch_size, train.precision)
    row = {
        "model": model_name,
        "seed": train.seed,
        "dataset": bundle.name,
        "monitor": result.monitor,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "train_seconds": seconds,
        "valid": valid,
        "test": test,
        "params": params,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "data": bundle.meta,
        **distributed_fields(trainer, train),
    }
    if out_dir and distributed.is_writer():
        (out_dir / "result.json").write_text(json.dumps(row, indent=2, default=str))
    return row


def distributed_fields(trainer: Trainer, train: TrainConfig) -> dict[str, Any]:
    """Where a run trained: device, precision, number of processes and the global batch size."""
    world = distributed.world_size()
    return {
        "device": str(trainer.device),
        "precision": train.precision,
        "world_size": world,
        "global_batch_size": train.batch_size,
    }


def write_run_info(
    out_dir: Path,
    bundle: DataBundle,
    model_name: str,
    params: dict[str, Any],
    train: TrainConfig,
    tasks: list[TaskSpec],
) -> None:
    info = {
        "model": model_name,
        "params": params,
        "train": asdict(train),
        "dataset": bundle.name,
        "data_meta": bundle.meta,
        "layout": bundle.layout.to_dict(),
        "tasks": [asdict(t) for t in tasks],
        "preprocessor": bundle.preprocessor_state,
    }
    (out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))


def load_run(run_dir: str | Path, which: str = "best"):
    """Rebuild a trained model from a run folder (``run.json`` + ``best.pt`` or ``last.pt``)."""
    from mtlrec.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json)")
    info = json.loads(info_path.read_text())
    layout = FeatureLayout.from_dict(info["layout"])
    tasks = [TaskSpec(**t) for t in info["tasks"]]
    model = create_model(info["model"], layout, tasks, **info["params"])
    state = ckpt.load(run_dir / f"{which}.pt")
    model.load_state_dict(state["model"])
    model.eval()
    return model, info


def run_experiment(
    cfg: dict[str, Any], *, progress: bool = True, resume: bool = False, on_result: Any = None
) -> list[dict[str, Any]]:
    with distributed.rank_zero_first():  # preparation and caching once; the other ranks then read the cache
        bundle = load_data(cfg)
    out = Path(cfg["out_dir"]) if cfg.get("out_dir") else None
    defaults = cfg.get("model_defaults") or {}
    models = cfg.get("models") or ([cfg["model"]] if cfg.get("model") else [])
    if not models:
        raise ValueError("config needs `models` (a list) or `model`")
    rows = []
    for spec in models:
        spec = {"name": spec} if isinstance(spec, str) else spec
        params = {**defaults, **(spec.get("params") or {})}
        label = spec.get("label", spec["name"])
        for seed in cfg.get("seeds", [0]):
            tcfg = train_config({**(cfg.get("train") or {}), "progress": progress}, seed)
            run_dir = out / label / f"seed{seed}" if out else None
            row = run_one(bundle, spec["name"], params, tcfg, run_dir, resume=resume)
            row["label"] = label
            rows.append(row)
            if out and distributed.is_writer():
                with open(out / "results.jsonl", "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
            if on_result:
                on_result(row)
    return rows


def summarize(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Mean ± std per (model label, task, metric) over seeds."""
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in rows:
        for task, ms in r[split].items():
            for metric, v in ms.items():
                groups.setdefault((r.get("label", r["model"]), task, metric), []).append((r["seed"], v))
    out = []
    for (label, task, metric), vals in groups.items():
        v = np.array([x for _, x in vals])
        out.append(
            {
                "model": label,
                "task": task,
                "metric": metric,
                "split": split,
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "values": v.tolist(),
                "seeds": [s for s, _ in vals],
            }
        )
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Rows: models; columns: task/metric; cells: mean ± std."""
    cols = list(dict.fromkeys((s["task"], s["metric"]) for s in summary))
    models = list(dict.fromkeys(s["model"] for s in summary))
    cell = {(s["model"], s["task"], s["metric"]): f"{s['mean']:.4f} ± {s['std']:.4f}" for s in summary}
    head = "| model | " + " | ".join(f"{t} {m}" for t, m in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    lines = [head, sep]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell.get((m, t, k), "–") for t, k in cols) + " |")
    return "\n".join(lines)
