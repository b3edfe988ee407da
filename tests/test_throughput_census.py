"""benchmarks/throughput.py --data census: the models timed are those the claims grids train on census."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
    with pytest.raises(ValueError, match="no cell of claims_census/claims_census_dtn is 'nope'"):
        pick("nope")
