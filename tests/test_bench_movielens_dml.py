"""benchmarks/movielens_dml.py: its summary pairs each variant with the plain backbone over the seeds both have
finished (so a partial, interrupted JSON is still right), and each variant names its DML plug-in."""

from __future__ import annotations

import pytest
import torch

from mtlrec.metrics import paired_test
from tests.census_bench import ROOT, benchmark

bench = benchmark("movielens_dml")


def _run(model: str, variant: str, seed: int, auc: float, mse: float) -> dict:
    return {
        "model": model,
        "variant": variant,
        "seed": seed,
        "test": {"like": {"auc": auc}, "rating": {"mse": mse}},
        "best_epoch": 2,
        "seconds": 10.0,
    }


def test_summary_pairs_variants_with_plain_over_common_seeds_only():
    runs = [
        _run("mmoe", "plain", 0, 0.80, 0.90),
        _run("mmoe", "dml", 0, 0.81, 0.88),
        _run("mmoe", "plain", 1, 0.79, 0.92),
        _run("mmoe", "dml", 1, 0.81, 0.89),
        _run("mmoe", "dml", 2, 0.90, 0.50),  # its plain run has not finished: not paired
    ]
    rows = {(r["model"], r["variant"], r["task"]): r for r in bench.summary_rows(runs)}
    assert [k for k in rows] == [
        ("mmoe", "plain", "like"),
        ("mmoe", "plain", "rating"),
        ("mmoe", "dml", "like"),
        ("mmoe", "dml", "rating"),
    ]
    dml = rows[("mmoe", "dml", "like")]
    assert dml["seeds"] == [0, 1, 2] and dml["mean"] == pytest.approx((0.81 + 0.81 + 0.90) / 3)
    assert dml["std"] == pytest.approx(float(torch.tensor([0.81, 0.81, 0.90], dtype=torch.float64).std()))
    expected = paired_test([0.81, 0.81], [0.80, 0.79])
    assert dml["diff_vs_plain"] == pytest.approx(expected["mean_diff"])
    assert dml["p_value_vs_plain"] == pytest.approx(expected["p_value"])
    assert "diff_vs_plain" not in rows[("mmoe", "plain", "like")]
    assert rows[("mmoe", "dml", "rating")]["diff_vs_plain"] == pytest.approx(-0.025)


def test_a_variant_with_one_paired_seed_gets_no_test():
    rows = bench.summary_rows([_run("ple", "plain", 0, 0.8, 0.9), _run("ple", "gkd", 0, 0.8, 0.9)])
    assert all("p_value_vs_plain" not in r for r in rows)


@pytest.mark.parametrize("model", bench.MODELS)
def test_every_backbone_variant_names_its_plugin(model):
    assert "dml" not in bench.model_params(model, "plain")
    for variant in bench.VARIANTS[1:]:
        assert bench.model_params(model, variant)["dml"] == {"variant": variant}


def test_the_cli_config_uses_the_benchmark_settings():
    from mtlrec.experiment import load_config

    cfg = load_config(ROOT / "configs" / "movielens_dml.yaml")
    assert cfg["data"] == {"name": "movielens_1m", "params": {"split_seed": 0}}
    for spec in cfg["models"]:
        variant = spec.get("label", "mmoe+plain").split("+")[1]
        params = {**cfg["model_defaults"], **spec["params"]}
        assert params == bench.model_params(spec["name"], variant), spec
    assert cfg["train"] == {**bench.TRAIN, "monitor": "like.auc"}
