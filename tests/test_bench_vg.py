"""benchmarks/vg_study.py: its 17 configurations build DEPHN (and MMoE with the VG plug-in) and its rows pair every
configuration with no_vg of the same data set, model and seed."""

from __future__ import annotations

import sys
from pathlib import Path

from mtlrec.data.batches import BatchIterator
from mtlrec.data.datasets import load_dataset
from mtlrec.models.registry import create_model
from mtlrec.plugins.virtual_gradient import RELEVANCE, VARIANTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vg_study as bench  # noqa: E402


def test_configurations_build_models_with_the_requested_vg():
    configs = bench.configurations(list(VARIANTS), list(RELEVANCE))
    assert len(configs) == 17 and configs[0] == ("no_vg", None, None)
    data = load_dataset("criteo_ru", rows=400, max_vocab=50)
    batch = next(iter(BatchIterator(data.train, 64)))
    for model in ("dephn", "mmoe"):
        for _, variant, relevance in (configs[0], configs[-1]):
            m = create_model(model, data, **bench.vg_params(model, variant, relevance))
            vg = getattr(m, "virtual_gradient_plugin", None)
            assert (vg is None) == (variant is None)
            if vg is not None:
                assert (vg.variant, vg.relevance) == (variant, relevance)
            assert set(m(batch).logits) == {"task1", "task2"}


def test_study_rows_pair_each_configuration_with_no_vg():
    runs = []
    for seed in (0, 1, 2):
        for label, delta in (("no_vg", 0.0), ("add_sqrt/pearson", 0.01 + 0.001 * seed)):
            test = {"task1": {"auc": 0.8 + delta}, "task2": {"auc": 0.7 - delta}}
            runs.append(
                {"dataset": "criteo_r", "label": f"dephn:{label}", "registry_model": "dephn", "seed": seed}
                | {"model": "dephn", "test": test, "valid": test}
            )
    rows = bench.study_rows(runs)
    diffs = [r for r in rows if r["metric"] == "auc_diff_vs_no_vg"]
    assert {(r["vg"], r["relevance"], r["task"]) for r in diffs} == {
        ("add_sqrt", "pearson", "task1"),
        ("add_sqrt", "pearson", "task2"),
    }
    d1 = next(r for r in diffs if r["task"] == "task1")
    assert abs(d1["mean"] - 0.011) < 1e-9 and d1["seeds"] == [0, 1, 2] and d1["p_value"] < 0.01
    table = bench.study_table(bench.attach_diffs(rows), "criteo_r")
    assert "no_vg" in table and "+0.0110" in table
