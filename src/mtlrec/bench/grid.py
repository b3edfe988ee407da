"""The grid of a benchmark config: its ``models:`` list × ``seeds`` (× ``bench.datasets``), one :class:`Cell` each.

A config is the experiment format (``mtlrec.experiment.load_config``: ``data``, ``model_defaults``, ``models:
[{name, label, params, train}]``, ``train``, ``seeds``, ``out_dir``) with a ``bench`` section::

    bench:
      baseline: mmoe               # paired t-tests of every other model against this label (over common seeds)
      single_task: single_task     # MTL gain (PLE §5) of every model against this label
      datasets:                    # optional grid over data sets (default: the top-level data)
        - {label: group1, name: census_income, params: {group: 1}}
      expected: {mmoe: {income.auc: 0.950}}   # mean test metric thresholds (>= higher-is-better, <= otherwise)
      train_rows: 40000            # optional: train on this many rows of a fixed random subset of the train split
      quick: {seeds: [0], train: {epochs: 1}}  # deep-merged over the config under --quick
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlrec.errors import UserError, unknown_name
from mtlrec.experiment import apply_overrides, deep_update, load_config


@dataclass
class Cell:
    """One run of the grid: a model label with its registry model, params and train settings, one seed, one data
    set (``dataset`` is the ``bench.datasets`` label, or None for the config's top-level data)."""

    label: str
    model: str
    params: dict[str, Any]
    train: dict[str, Any]
    seed: int
    data: dict[str, Any]
    dataset: str | None = None
    train_rows: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return "/".join([*([self.dataset] if self.dataset else []), self.label, f"seed{self.seed}"])

    @property
    def run_dir(self) -> Path:
        """The run folder under the grid's out folder: ``[<dataset>/]<label>/seed<k>``."""
        return Path(self.key)

    def fingerprint(self) -> str:
        """A hash of everything that determines the cell's result (a changed config never reuses a result)."""
        what = [self.data, self.model, self.params, self.train, self.seed, self.train_rows]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.label} seed {self.seed}" + (f" [{self.dataset}]" if self.dataset else "")


def bench_section(cfg: dict[str, Any]) -> dict[str, Any]:
    section = cfg.get("bench") or {}
    if not isinstance(section, dict):
        raise UserError(f"bench: expected a mapping, got {type(section).__name__}")
    return section


def _validate(cfg: dict[str, Any]) -> None:
    """Engineer 1's whole-config validation where this mtlrec has it (plain dicts are used either way)."""
    try:
        from mtlrec.config import validate_config  # type: ignore[attr-defined]
    except ImportError:
        return
    validate_config(cfg)


def prepare_config(
    config: str | Path | dict[str, Any],
    *,
    overrides: list[str] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """The config (a path, read with ``base:`` inheritance, or a dict) with ``bench.quick`` deep-merged over it
    under ``quick`` and then the ``--set`` overrides applied, validated where validation is available."""
    cfg = load_config(config) if not isinstance(config, dict) else copy.deepcopy(config)
    if quick:
        deep_update(cfg, copy.deepcopy(bench_section(cfg).get("quick") or {}))
    apply_overrides(cfg, list(overrides or []))
    _validate(cfg)
    return cfg


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` → ``[0, 1, 2]``; a single number ``"5"`` → the first five seeds ``[0, …, 4]``; ``"3,"`` → ``[3]``."""
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--seeds: expected a count (5) or a comma-separated list (0,1,2), got {text!r}") from None
    if len(values) == 1 and "," not in str(text):
        if values[0] < 1:
            raise UserError(f"--seeds: a count must be at least 1, got {values[0]} (seed 0 alone: --seeds 0,)")
        return list(range(values[0]))
    return list(dict.fromkeys(values))


def _model_specs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    models = cfg.get("models")
    if not isinstance(models, list) or not models:
        raise UserError("models: expected a non-empty list of {name, label, params, train} entries")
    specs, seen = [], set()
    for i, spec in enumerate(models):
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if "name" not in spec:
            raise UserError(f"models[{i}]: needs a name (a registry model, see `mtlrec models`)")
        spec["label"] = str(spec.get("label") or spec["name"])
        if "/" in spec["label"]:
            raise UserError(f"models[{i}]: label {spec['label']!r} names a folder: use no '/' in it")
        if spec["label"] in seen:
            raise UserError(f"models[{i}]: label {spec['label']!r} is used twice; give each entry its own label")
        seen.add(spec["label"])
        specs.append(spec)
    return specs


def _datasets(cfg: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    grid = bench_section(cfg).get("datasets")
    if not grid:
        data = cfg.get("data") or {}
        if "name" not in data:
            raise UserError("data.name: missing (see `mtlrec datasets`)")
        return [(None, {"name": data["name"], "params": dict(data.get("params") or {})})]
    out, seen = [], set()
    for i, d in enumerate(grid):
        if not isinstance(d, dict) or "name" not in d:
            raise UserError(f"bench.datasets[{i}]: expected {{label, name, params}}")
        label = str(d.get("label") or d["name"])
        if "/" in label:
            raise UserError(f"bench.datasets[{i}]: label {label!r} names a folder: use no '/' in it")
        if label in seen:
            raise UserError(f"bench.datasets[{i}]: label {label!r} is used twice")
        seen.add(label)
        out.append((label, {"name": d["name"], "params": dict(d.get("params") or {})}))
    return out


def _pick_datasets(cfg: dict[str, Any], labels: list[str] | None) -> list[tuple[str | None, dict[str, Any]]]:
    """The config's data sets, or those of ``labels`` (``bench.datasets`` labels) in the config's order."""
    datasets = _datasets(cfg)
    if not labels:
        return datasets
    known = [label for label, _ in datasets if label is not None]
    if not known:
        raise UserError("--datasets: this config has one data set (no bench.datasets to pick from)")
    for label in labels:
        if label not in known:
            raise unknown_name("data set label", label, known, where="--datasets")
    return [(label, data) for label, data in datasets if label in labels]


def plan_grid(
    cfg: dict[str, Any],
    *,
    seeds: list[int] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
) -> list[Cell]:
    """Every cell of the grid, seed-major (then data set, then model), so that an interrupted grid still has every
    model with its first seeds. ``models`` picks entries by label (or, for a
    value that is no label, by registry name); ``datasets`` picks ``bench.datasets`` by label (a cell's fingerprint
    does not depend on which others are planned, so a grid run on some data sets first continues on all of them
    later); ``seeds`` replaces the config's."""
    specs = _model_specs(cfg)
    if models:
        labels = [s["label"] for s in specs]
        names = {s["name"] for s in specs}
        for m in models:
            if m not in labels and m not in names:
                raise unknown_name("model label", m, labels, where="--models")
        # a value names a label; one that is no label names every entry of that registry model
        specs = [s for s in specs if s["label"] in models or (s["name"] in models and s["name"] not in labels)]
    seeds = list(seeds if seeds is not None else cfg.get("seeds", [0]))
    if not seeds:
        raise UserError("seeds: expected at least one seed")
    defaults = cfg.get("model_defaults") or {}
    train = {k: v for k, v in (cfg.get("train") or {}).items() if k != "progress"}
    train_rows = bench_section(cfg).get("train_rows")
    cells = []
    picked = _pick_datasets(cfg, datasets)
    for seed in seeds:
        for dataset, data in picked:
            for spec in specs:
                cells.append(
                    Cell(
                        label=spec["label"],
                        model=spec["name"],
                        params={**copy.deepcopy(defaults), **copy.deepcopy(spec.get("params") or {})},
                        train={**copy.deepcopy(train), **copy.deepcopy(spec.get("train") or {})},
                        seed=int(seed),
                        data=copy.deepcopy(data),
                        dataset=dataset,
                        train_rows=int(train_rows) if train_rows else None,
                    )
                )
    return cells
