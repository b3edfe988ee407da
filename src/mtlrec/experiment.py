"""Experiments: a config (data × models × seeds × training settings) run into one results row per run.

The config format is described and validated by :mod:`mtlrec.config` (``docs/experiments.md``)::

    name: census_mmoe
    data: {name: census_income, params: {group: 1}}
    models:
      - {name: mmoe, params: {num_experts: 8, expert_hidden: [64]}}
      - {name: ple}
    model_defaults: {embedding_dim: 16}
    train: {epochs: 10, batch_size: 1024, monitor: income.auc}
    seeds: [0, 1, 2]
    out_dir: runs/census_mmoe          # default: runs/<name>

Each run writes ``out_dir/<label>/seed<k>/`` (``run.json``, checkpoints, ``log.jsonl``, ``result.json``) and
keeps one row per (label, seed, data set) in ``out_dir/results.jsonl`` (a rerun replaces its row; the file is
rewritten atomically). Model selection uses the validation split; the test split is evaluated once, at the end,
with the best validation weights. A run that fails with a :class:`~mtlrec.errors.UserError` (a NaN loss, say) is
recorded as ``status: failed`` and the other runs go on; a :class:`~mtlrec.errors.SettingsError` (settings no run
can train with) ends the experiment.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.config import (  # apply_overrides, deep_update: public helpers kept here for callers
    RESUMABLE_TRAIN_KEYS,
    ExperimentConfig,
    apply_overrides,  # noqa: F401
    deep_update,  # noqa: F401
    load_config_file,
    validate_config,
)
from mtlrec.data.bundle import DataBundle
from mtlrec.data.datasets import load_dataset
from mtlrec.data.layout import FeatureLayout
from mtlrec.errors import SettingsError, UserError, unknown_name
from mtlrec.models.registry import create_model
from mtlrec.schema import TaskSpec
from mtlrec.seeding import seed_everything  # noqa: F401  (re-exported: mtlrec.experiment.seed_everything)
from mtlrec.train import distributed
from mtlrec.train.checkpoint import atomic_write_text
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


def load_config(path: str | Path | None) -> dict[str, Any]:
    """The config file (its ``base:`` chain merged under it) as a dict; ``None``: the built-in default. Not yet
    validated: :func:`mtlrec.config.validate_config` does that (``run_experiment`` calls it)."""
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    return load_config_file(path)


def train_config(raw: dict[str, Any], seed: int) -> TrainConfig:
    """A :class:`TrainConfig` from a train section (experiment-level keys such as ``loggers`` left out)."""
    known = {f.name for f in fields(TrainConfig)}
    raw = {k: v for k, v in raw.items() if k in known or k not in ("loggers",)}
    for k in raw:
        if k not in known:
            raise unknown_name("train setting", k, known, where=f"train.{k}")
    return TrainConfig(**{**raw, "seed": seed})


def load_data(cfg: dict[str, Any]) -> DataBundle:
    data = cfg.get("data") or {}
    if "name" not in data:
        raise UserError("config needs data.name (see `mtlrec datasets`)")
    return load_dataset(data["name"], **(data.get("params") or {}))


# ---- one run ---------------------------------------------------------------------------------------------------
def make_run_info(
    bundle: DataBundle,
    model_name: str,
    params: dict[str, Any],
    train: TrainConfig,
    tasks: list[TaskSpec],
    label: str | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """The metadata of one run (``run.json``): everything :func:`load_run` and a ``--resume`` check need."""
    return _plain(
        {
            "experiment": experiment,
            "label": label or model_name,
            "model": model_name,
            "params": params,
            "train": asdict(train),
            "dataset": bundle.name,
            "data": {"name": bundle.meta.get("dataset_name"), "params": bundle.meta.get("load_params")},
            "data_meta": bundle.meta,
            "layout": bundle.layout.to_dict(),
            "tasks": [asdict(t) for t in tasks],
            "preprocessor": bundle.preprocessor_state,
        }
    )


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as JSON (or a string as is) written atomically (:func:`mtlrec.train.checkpoint.atomic_write_text`)."""
    atomic_write_text(path, obj if isinstance(obj, str) else json.dumps(obj, indent=2, default=str))


def read_run_info(path: Path) -> dict[str, Any]:
    """``run.json``, or one line naming the file when it is damaged."""
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged (not valid JSON); retrain the run with --overwrite") from None
    if not isinstance(info, dict) or not {"model", "layout", "tasks", "params"} <= set(info):
        raise UserError(f"{path} is damaged (it lacks the model, params, layout or tasks); retrain with --overwrite")
    return info


_RESUME_KEYS = ("model", "params", "data", "layout", "tasks", "train")


def resume_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs between a stored run and the run to resume, except the
    train settings a resume may change (:data:`mtlrec.config.RESUMABLE_TRAIN_KEYS`)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(dict.fromkeys([*a, *b])):
                if path == "train" and k in RESUMABLE_TRAIN_KEYS:
                    continue
                walk(a.get(k), b.get(k), f"{path}.{k}")
        elif a != b:
            sa, sb = json.dumps(a, default=str), json.dumps(b, default=str)
            out.append(f"{path}: {sa[:40]} -> {sb[:40]}")

    for key in _RESUME_KEYS:
        walk(_plain(old.get(key)), _plain(new.get(key)), key)
    return out


def check_resumable(run_dir: Path, info: dict[str, Any]) -> None:
    """Refuse (one line, the differing keys old -> new) to resume a run folder whose ``run.json`` describes
    another run than ``info``."""
    diffs = resume_differences(read_run_info(run_dir / "run.json"), info)
    if diffs:
        raise UserError(
            f"{run_dir}: --resume refused, the run differs from the stored one: "
            + "; ".join(diffs[:8])
            + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            + " (use --overwrite to start afresh)"
        )


def run_one(
    bundle: DataBundle,
    model_name: str,
    params: dict[str, Any],
    train: TrainConfig,
    out_dir: Path | None,
    tasks: list[TaskSpec] | None = None,
    resume: bool = False,
    *,
    label: str | None = None,
    experiment: str | None = None,
    loggers: list[str] | tuple[str, ...] = (),
    config: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one model with one seed; returns its results row (validation-selected, test evaluated once,
    ``best_epoch`` 1-based). ``resume``: continue from ``out_dir/last.pt`` after checking that the stored
    ``run.json`` describes the same run. ``loggers``: tracking back ends (:mod:`mtlrec.train.loggers`).
    ``on_epoch(epoch, record)``: called after each epoch's validation, ``epoch`` 1-based."""
    seed_everything(train.seed)
    tasks = tasks or bundle.tasks
    out_dir = Path(out_dir) if out_dir else None
    info = make_run_info(bundle, model_name, params, train, tasks, label, experiment)
    stored = out_dir / "run.json" if out_dir else None
    if resume and stored is not None and stored.exists():
        check_resumable(out_dir, info)  # the Trainer then records the settings a resume may change in run.json
    try:
        model = create_model(model_name, bundle.layout, tasks, **copy.deepcopy(params))
    except TypeError as e:
        raise UserError(f"model {model_name!r}: {e}") from None
    trainer = Trainer(model, train, out_dir, run_info=info)  # run.json is written with the first checkpoint
    if resume:
        trainer.resume()
    from mtlrec.train.loggers import create_loggers

    trackers = create_loggers(
        loggers,
        out_dir,
        experiment=experiment or "mtlrec",
        run_name=f"{label or model_name}/seed{train.seed}",
        config=config if config is not None else info,
    )

    def epoch_end(record: dict[str, Any]) -> None:
        epoch = len(trainer.state.get("history", [])) or record.get("epoch", 0) + 1
        for t in trackers:
            t.log_epoch(epoch, record)
        if on_epoch:
            on_epoch(epoch, record)

    fit_kw: dict[str, Any] = {"on_epoch_end": epoch_end}
    if trackers:
        fit_kw["on_step"] = lambda step, loss: [t.log_step(step, loss) for t in trackers]
    t0 = time.perf_counter()
    status = "FAILED"
    try:
        result = trainer.fit(bundle.train, bundle.valid, **fit_kw)
        status = "FINISHED"
    finally:
        for t in trackers:
            t.close(status)
    seconds = time.perf_counter() - t0
    trainer.load_best()
    valid = evaluate(model, bundle.valid, train.eval_batch_size, train.precision)
    test = evaluate(model, bundle.test, train.eval_batch_size, train.precision)
    improved = [i for i, r in enumerate(result.history) if r.get("improved")]
    row = {
        "label": label or model_name,
        "model": model_name,
        "seed": train.seed,
        "dataset": bundle.name,
        "status": "ok",
        "monitor": result.monitor,
        "best_epoch": improved[-1] + 1 if improved else None,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "train_seconds": seconds,
        "valid": valid,
        "test": test,
        "params": params,
        "num_parameters": trainer.num_parameters(),
        "data": bundle.meta,
        **distributed_fields(trainer, train),
    }
    stats = [{"epoch": i, **r["model_stats"]} for i, r in enumerate(result.history, 1) if r.get("model_stats")]
    if stats:  # what the model measured per epoch (the VG plug-in's Γ): log.jsonl's model_stats
        row["epoch_stats"] = stats
    if out_dir and distributed.is_writer():
        write_json_atomic(out_dir / "result.json", row)
    return row


def distributed_fields(trainer: Trainer, train: TrainConfig) -> dict[str, Any]:
    """Where a run trained: device, precision, number of processes, the global batch size and, with sharded
    TorchRec tables, the planner's plan (per table: sharding type, compute kernel, ranks)."""
    world = distributed.world_size()
    fields = {
        "device": str(trainer.device),
        "precision": train.precision,
        "world_size": world,
        "global_batch_size": train.batch_size,
    }
    if trainer.embedding_plan is not None:
        fields["embedding_plan"] = trainer.embedding_plan
    return fields


def load_run(run_dir: str | Path, which: str = "best"):
    """Rebuild a trained model from a run folder (``run.json`` + ``best.pt`` or ``last.pt``)."""
    from mtlrec.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise UserError(f"{run_dir} is not a run folder (no run.json); give a folder like runs/<name>/<model>/seed0")
    if which not in ("best", "last"):
        raise unknown_name("checkpoint", which, ("best", "last"), where="--checkpoint")
    info = read_run_info(info_path)
    layout = FeatureLayout.from_dict(info["layout"])
    tasks = [TaskSpec(**t) for t in info["tasks"]]
    model = create_model(info["model"], layout, tasks, **info["params"])
    path = run_dir / f"{which}.pt"
    if not path.exists():
        raise UserError(f"{path} not found (the run has not finished an epoch)")
    try:
        state = ckpt.load(path)
        model.load_state_dict(state["model"])
    except UserError:
        raise
    except Exception:
        raise UserError(f"{path} is damaged (cannot be loaded as a checkpoint of this run)") from None
    model.eval()
    return model, info


# ---- an experiment ---------------------------------------------------------------------------------------------
RUN_FILES = ("run.json", "last.pt", "best.pt", "log.jsonl", "result.json")


def holds_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES)


def record_result(path: Path, row: dict[str, Any]) -> None:
    """Put ``row`` in ``results.jsonl`` in place of any row of the same (label, seed, data set); atomic."""
    key = (row.get("label"), row.get("seed"), row.get("dataset"))
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                old = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from an older, non-atomic writer
            if (old.get("label", old.get("model")), old.get("seed"), old.get("dataset")) != key:
                rows.append(old)
    rows.append(row)
    write_json_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def epoch_line(label: str, seed: int, epoch: int, epochs: int, record: dict[str, Any]) -> str:
    """``mmoe seed 0 epoch 3/10: valid income.auc 0.9412 marital.auc 0.9931 (best) 12.3 s``: each task's first
    metric (the monitored metric where the task reports it)."""
    metric = str(record.get("monitor", "")).partition(".")[2]
    parts = []
    for task, ms in (record.get("valid") or {}).items():
        m = metric if metric in ms else next(iter(ms), None)
        if m is not None:
            parts.append(f"{task}.{m} {ms[m]:.4f}")
    best = " (best)" if record.get("improved") else ""
    secs = record.get("train_seconds")
    return f"{label} seed {seed} epoch {epoch}/{epochs}: valid {' '.join(parts)}{best}" + (
        f" {secs:.1f} s" if secs is not None else ""
    )


def check_monitor(exp: ExperimentConfig, bundle: DataBundle) -> None:
    names = [t.name for t in bundle.tasks]
    for i, m in enumerate(exp.models):
        monitor = exp.model_train(m).get("monitor")
        if not monitor:
            continue
        task, _, metric = monitor.partition(".")
        section = f"models[{i}].train" if "monitor" in m.train else "train"
        where = f"{exp.source}: {section}.monitor"
        if task != "mean" and task not in names:
            raise unknown_name("task", task, ["mean", *names], where=where)
        offered = {x for t in bundle.tasks for x in (t.metrics or []) if task in ("mean", t.name)}
        if metric not in offered:
            raise unknown_name(f"metric of task {task!r}", metric, offered, where=where)


def run_experiment(
    cfg: dict[str, Any] | ExperimentConfig,
    *,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[str], None] | None = None,
    source: str = "config",
) -> list[dict[str, Any]]:
    """Every (model, seed) run of a config; returns the results rows (failed runs included, ``status:
    failed``). A run folder that already holds a run is resumed (``resume``), replaced (``overwrite``) or
    refused before anything trains. ``on_epoch(line)`` gets one console line per epoch (:func:`epoch_line`)."""
    exp = cfg if isinstance(cfg, ExperimentConfig) else validate_config(cfg, source)
    raw = cfg if isinstance(cfg, dict) else None
    out = Path(exp.out_dir)
    plan = [(m, seed, out / m.label / f"seed{seed}") for m in exp.models for seed in exp.seeds]
    taken = [d for _, _, d in plan if holds_run(d)]
    if taken and not (resume or overwrite):
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UserError(
            f"{taken[0]} already holds a run{more}; pass --resume to continue it or --overwrite to replace it"
        )
    with distributed.rank_zero_first():  # preparation and caching once; the other ranks then read the cache
        bundle = load_data({"data": {"name": exp.data.name, "params": exp.data.params}})
    check_monitor(exp, bundle)
    if resume:  # every resumed run must be the stored one: refuse before anything trains
        for m, seed, run_dir in plan:
            if (run_dir / "run.json").exists():
                tcfg = train_config({**exp.model_train(m), "progress": progress}, seed)
                check_resumable(run_dir, make_run_info(bundle, m.name, m.params, tcfg, bundle.tasks, m.label))
    rows = []
    for m, seed, run_dir in plan:
        settings = exp.model_train(m)
        loggers = settings.get("loggers") or []
        again = resume and holds_run(run_dir)
        if overwrite and not again and run_dir.exists() and distributed.is_writer():
            shutil.rmtree(run_dir)
        epochs = settings.get("epochs", TrainConfig.epochs)

        def epoch_cb(epoch: int, record: dict[str, Any], m=m, seed=seed, epochs=epochs) -> None:
            if on_epoch:
                on_epoch(epoch_line(m.label, seed, epoch, epochs, record))

        try:
            tcfg = train_config({**settings, "progress": progress}, seed)
            row = run_one(
                bundle,
                m.name,
                m.params,
                tcfg,
                run_dir,
                resume=again,
                label=m.label,
                experiment=exp.name,
                loggers=loggers,
                config=raw,
                on_epoch=epoch_cb,
            )
        except SettingsError:
            raise
        except UserError as e:
            row = {
                "label": m.label,
                "model": m.name,
                "seed": seed,
                "dataset": bundle.name,
                "status": "failed",
                "error": str(e),
            }
        rows.append(row)
        if distributed.is_writer():
            record_result(out / "results.jsonl", row)
        if on_result:
            on_result(row)
    return rows


def summarize(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Mean ± std per (model label, task, metric) over seeds."""
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("status") == "failed":
            continue
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


def markdown_table(summary: list[dict[str, Any]], failed: dict[str, int] | None = None) -> str:
    """Rows: models; columns: task/metric; cells: mean ± std. ``failed``: label -> number of failed runs (a label
    without any finished run shows ``failed`` in every cell; otherwise the count is added to its name)."""
    failed = failed or {}
    cols = list(dict.fromkeys((s["task"], s["metric"]) for s in summary))
    models = list(dict.fromkeys([*(s["model"] for s in summary), *failed]))
    cell = {(s["model"], s["task"], s["metric"]): f"{s['mean']:.4f} ± {s['std']:.4f}" for s in summary}
    head = "| model | " + (" | ".join(f"{t} {m}" for t, m in cols) if cols else "status") + " |"
    sep = "|---" * (max(len(cols), 1) + 1) + "|"
    lines = [head, sep]
    for m in models:
        empty = "failed" if m in failed else "–"
        name = f"{m} ({failed[m]} failed)" if m in failed and any(k[0] == m for k in cell) else m
        lines.append(f"| {name} | " + " | ".join(cell.get((m, t, k), empty) for t, k in cols or [("", "")]) + " |")
    return "\n".join(lines)
