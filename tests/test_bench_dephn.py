"""benchmarks/census_dephn.py: its config parses (with the census_income.yaml base) and every default row builds and
runs on the Census-Income sample; the paired-difference rows it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mtlrec
from mtlrec.data.batches import BatchIterator
from mtlrec.experiment import train_config
from mtlrec.models.registry import create_model
from tests.conftest import needs_shared_data
from tests.test_census import load_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import census_dephn as bench  # noqa: E402
from census_income import load_bench_config, model_params, paired_rows, registry_name  # noqa: E402


def test_config_inherits_census_income_and_names_registered_models():
    cfg = load_bench_config(bench.DEFAULT_CONFIG)
    base = load_bench_config(ROOT / "configs" / "census_income.yaml")
    assert cfg["train"] == base["train"] and cfg["model_defaults"] == base["model_defaults"]
    assert cfg["quick"] == base["quick"] and cfg["data"] == base["data"]
    train_config(cfg["train"], 0)
    registered = set(mtlrec.list_models())
    for name in bench.DEFAULT_MODELS:
        assert name in cfg["models"], name
        assert registry_name(cfg, name) in registered, name
    assert model_params(cfg, "mmoe") == model_params(base, "mmoe")
    assert model_params(cfg, "dephn-no_vg")["use_vg"] is False
    assert model_params(cfg, "mt_phn[d_pri_cf_pub]")["setting"] == "D_pri,C&F_pub"


@needs_shared_data("samples/census-income.sample")
def test_every_default_row_builds_and_runs_on_the_census_sample(tmp_path: Path):
    bundle = load_sample(tmp_path)
    batch = next(iter(BatchIterator(bundle.train, 32)))
    cfg = load_bench_config(bench.DEFAULT_CONFIG)
    for name in bench.DEFAULT_MODELS:
        params = model_params(cfg, name)
        model = create_model(params.pop("model", name), bundle.layout, bundle.tasks, **params)
        out = model(batch)
        assert set(out.logits) == {"income", "marital"}, name


def test_paired_rows_gain_and_plain_difference():
    def row(model, metric, values):
        mean = sum(values) / len(values)
        return {"model": model, "task": "t", "metric": metric, "split": "test", "mean": mean, "values": values}

    summary = [
        {**row("mmoe", "logloss", [0.30, 0.32]), "seeds": [0, 1]},
        {**row("dephn", "logloss", [0.28, 0.31]), "seeds": [0, 1]},
    ]
    gain = paired_rows(summary, "mmoe", "logloss")
    diff = paired_rows(summary, "mmoe", "logloss", gain=False)
    assert [g["model"] for g in gain] == ["dephn"] and gain[0]["metric"] == "mtl_gain_logloss"
    assert gain[0]["values"] == pytest.approx([0.02, 0.01])
    assert diff[0]["metric"] == "logloss_diff_vs_mmoe" and diff[0]["values"] == pytest.approx([-0.02, -0.01])
    assert diff[0]["p_value"] is not None
