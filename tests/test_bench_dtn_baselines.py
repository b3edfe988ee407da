"""benchmarks/census_dtn_baselines.py: its config inherits census_income.yaml, the weighting rows carry their
strategy as train overrides, every default row builds and runs on the Census-Income sample, and the DTN job returns
its permutation importance from the reloaded selected-epoch model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrec.experiment import train_config
from mtlrec.train.weighting import list_weightings
from tests.census_bench import (
    benchmark,
    check_inherits_census_income,
    check_rows_run_on_sample,
    load_bench_config,
    model_params,
    row_entry,
    row_train,
)
from tests.conftest import needs_shared_data
from tests.test_census import load_sample

bench = benchmark("census_dtn_baselines")


def test_config_inherits_census_income_and_names_registered_models():
    cfg = check_inherits_census_income(bench.DEFAULT_CONFIG, bench.DEFAULT_MODELS)
    for name in bench.DEFAULT_MODELS:
        train_config(row_train(cfg, name, cfg["train"]), 0)  # unknown train settings raise


def test_every_registered_weighting_has_an_mmoe_row_with_mmoe_sizes():
    cfg = load_bench_config(bench.DEFAULT_CONFIG)
    mmoe = model_params(cfg, "mmoe")
    rows = [n for n in bench.DEFAULT_MODELS if n.startswith("mmoe+")]
    assert sorted(n.split("+", 1)[1] for n in rows) == sorted(w for w in list_weightings() if w != "fixed")
    for name in rows:
        weighting = name.split("+", 1)[1]
        params = model_params(cfg, name)
        assert params.pop("model") == "mmoe" and params == mmoe, name
        train = row_train(cfg, name, {**cfg["train"], "epochs": 1})
        assert train["weighting"] == weighting and train["epochs"] == 1 and train["lr"] == cfg["train"]["lr"]
    assert row_train(cfg, "mmoe+ple_dynamic", {})["weighting_params"] == {"gammas": 0.9}
    assert "weighting" not in row_train(cfg, "mmoe", {})


def test_row_entry_inherits_the_named_row_only_when_it_is_another_row():
    cfg = {"model_defaults": {"embedding_dim": 8}, "models": {"a": {"x": 1, "y": 2}, "b": {"model": "a", "y": 3}}}
    assert row_entry(cfg, "b") == {"x": 1, "y": 3, "model": "a"}
    assert row_entry(cfg, "a") == {"x": 1, "y": 2}
    assert model_params(cfg, "c") == {"embedding_dim": 8}


@needs_shared_data("samples/census-income.sample")
def test_every_default_row_builds_and_runs_on_the_census_sample(tmp_path: Path):
    check_rows_run_on_sample(tmp_path, bench.DEFAULT_CONFIG, bench.DEFAULT_MODELS)


@needs_shared_data("samples/census-income.sample")
def test_dtn_job_returns_the_importance_of_its_selected_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bundle = load_sample(tmp_path)
    monkeypatch.setitem(benchmark("census_income")._WORKER, "bundle", bundle)
    cfg = load_bench_config(bench.DEFAULT_CONFIG)
    params = {**model_params(cfg, "dtn"), "num_buckets": 1000}
    train = {"epochs": 1, "batch_size": 64, "progress": False, "monitor": "income.auc"}
    row = bench._run_job(("dtn", params, train, 0, {"n_repeats": 1, "max_rows": 100}))
    assert row["model"] == "dtn" and set(row["test"]) == {"income", "marital"}
    imp = row["importance"]
    assert set(imp) == {"income", "marital"} and "education" in imp["income"]
    plain = bench._run_job(("dtn", params, train, 0, None))
    assert "importance" not in plain and plain["test"] == row["test"]  # keeping the run folder changes nothing
