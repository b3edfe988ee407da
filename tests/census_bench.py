"""Checks shared by the tests of the census benchmarks (benchmarks/census_*.py) whose configs inherit
``configs/census_income.yaml``; puts ``benchmarks/`` on the import path and re-exports census_income's config
helpers (import benchmark scripts with :func:`benchmark`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import mtlrec
from mtlrec.data.batches import BatchIterator
from mtlrec.models.registry import create_model
from tests.test_census import load_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from census_income import (  # noqa: E402
    load_bench_config,
    model_params,
    paired_rows,
    registry_name,
    row_entry,
    row_train,
)

__all__ = ["load_bench_config", "model_params", "paired_rows", "registry_name", "row_entry", "row_train"]


def benchmark(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/<name>.py`` as a module."""
    return importlib.import_module(name)


def check_inherits_census_income(config: Path, names: list[str]) -> dict[str, Any]:
    """Assert the benchmark config keeps census_income.yaml's data, model defaults, quick and train settings and
    its mmoe entry, and that every row name has an entry naming a registered model; returns the config."""
    cfg = load_bench_config(config)
    base = load_bench_config(ROOT / "configs" / "census_income.yaml")
    assert cfg["train"] == base["train"] and cfg["model_defaults"] == base["model_defaults"]
    assert cfg["quick"] == base["quick"] and cfg["data"] == base["data"]
    assert model_params(cfg, "mmoe") == model_params(base, "mmoe")
    registered = set(mtlrec.list_models())
    for name in names:
        assert name in cfg["models"], name
        assert registry_name(cfg, name) in registered, name
    return cfg


def check_rows_run_on_sample(tmp_path: Path, config: Path, names: list[str]) -> None:
    """Assert every row name builds and runs a forward pass with both group-1 heads on the Census-Income sample."""
    bundle = load_sample(tmp_path)
    batch = next(iter(BatchIterator(bundle.train, 32)))
    cfg = load_bench_config(config)
    for name in names:
        params = model_params(cfg, name)
        model = create_model(params.pop("model", name), bundle.layout, bundle.tasks, **params)
        out = model(batch)
        assert set(out.logits) == {"income", "marital"}, name
