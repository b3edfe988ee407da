"""benchmarks/census_dephn.py: its config parses (with the census_income.yaml base) and every default row builds and
runs on the Census-Income sample; the paired-difference rows it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrec.experiment import train_config
from tests.census_bench import (
    benchmark,
    check_inherits_census_income,
    check_rows_run_on_sample,
    model_params,
    paired_rows,
)
from tests.conftest import needs_shared_data

bench = benchmark("census_dephn")


def test_config_inherits_census_income_and_names_registered_models():
    cfg = check_inherits_census_income(bench.DEFAULT_CONFIG, bench.DEFAULT_MODELS)
    train_config(cfg["train"], 0)
    assert model_params(cfg, "dephn-no_vg")["use_vg"] is False
    assert model_params(cfg, "mt_phn[d_pri_cf_pub]")["setting"] == "D_pri,C&F_pub"


@needs_shared_data("samples/census-income.sample")
def test_every_default_row_builds_and_runs_on_the_census_sample(tmp_path: Path):
    check_rows_run_on_sample(tmp_path, bench.DEFAULT_CONFIG, bench.DEFAULT_MODELS)


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
