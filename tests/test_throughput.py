"""benchmarks/throughput.py: --data census times the models the claims grids train; --op-times times each operator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mtlrec.errors import UserError
from tests.conftest import SHARED_DATA, needs_shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput as T  # noqa: E402


@needs_shared_data("census-income")
def test_census_workload_builds_the_claims_grids_models():
    data, build, pick = T.census_workload(str(SHARED_DATA))
    assert pick("mt_phn").label == "mt_phn[d_pub_cf_pri]"  # a registry name: its first cell
    assert pick("dephn-no_vg").params["use_vg"] is False  # a label: that cell
    assert pick("dtn").params["num_buckets"] == 50000  # from claims_census_dtn.yaml
    assert pick("mmoe").train["batch_size"] == 1024
    assert sum(p.numel() for p in build("mmoe", data, "dense").parameters()) == 143_474  # claims_census.yaml
    assert sum(p.numel() for p in build("dephn", data, "dense").parameters()) == 550_002
    assert "education" not in data.layout.field_names  # protocol paper
    with pytest.raises(UserError, match="no cell of claims_census/claims_census_dtn is 'nope'"):
        pick("nope")


def test_an_unknown_model_name_is_a_user_error_before_any_timing():
    T.check_model_names(["mmoe", "dephn"])
    with pytest.raises(UserError, match=r"--models: unknown model 'mmoee' \(did you mean 'mmoe'\?\)"):
        T.check_model_names(["mmoe", "mmoee"])


def test_op_wall_times_names_each_operator_with_its_shapes_and_calls():
    import torch

    w = torch.randn(32, 8, requires_grad=True)

    def step(x):
        (x @ w).relu().sum().backward()

    batches = iter([torch.randn(64, 32) for _ in range(3)])
    times = T.op_wall_times(step, batches, n=50, steps=3)
    rows = times["ops"]
    mm = [r for r in rows if r["op"] == "mm" and r["shapes"] == "64x32 32x8"]
    assert mm and mm[0]["calls_per_step"] == 1.0 and mm[0]["dtype"] == "float32"
    assert any(r["op"] == "mm" and r["shapes"].startswith("32x64") for r in rows)  # the weight gradient, backward
    assert abs(sum(r["share"] for r in rows) - 1.0) < 0.01 and all(r["ms_per_step"] >= 0 for r in rows)
    assert times["by_op"]["mm"] == pytest.approx(sum(r["ms_per_step"] for r in rows if r["op"] == "mm"), abs=0.01)
    assert times["ms_per_step"] == pytest.approx(sum(times["by_op"].values()), abs=0.05)
