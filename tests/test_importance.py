from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mtlrec.data.bundle import encode_tables
from mtlrec.explain.importance import (
    divergence,
    importance_table,
    permutation_importance,
    permutation_importance_detail,
    permute_field,
    plot_importance,
)
from mtlrec.models.registry import create_model
from mtlrec.schema import CategoricalFeature
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer
from tests.conftest import make_table, tiny_schema


@pytest.fixture
def noisy_bundle():
    """tiny_bundle plus ``noise``: a categorical field independent of every label."""
    full = make_table(3000)
    noise = np.random.default_rng(42).integers(0, 40, len(full)).astype(str)
    full = full.append_column("noise", pa.array(noise))
    schema = tiny_schema()
    schema.features.append(CategoricalFeature("noise"))
    tables = {"train": full.slice(0, 2000), "valid": full.slice(2000, 500), "test": full.slice(2500, 500)}
    return encode_tables("tiny_noise", schema, tables, {"seed": 0})


def test_permute_field_moves_one_column(tiny_bundle):
    data = tiny_bundle.valid
    perm = np.random.default_rng(0).permutation(len(data))
    out = permute_field(data, "cat", 0, perm)
    np.testing.assert_array_equal(out.cat[:, 0], data.cat[perm, 0])
    np.testing.assert_array_equal(out.cat[:, 1], data.cat[:, 1])
    np.testing.assert_array_equal(out.labels, data.labels)
    out = permute_field(data, "multi", "genres", perm)
    np.testing.assert_array_equal(out.multi["genres"], data.multi["genres"][perm])
    assert out.cat is data.cat  # other columns are not copied


def test_label_field_ranks_above_noise(noisy_bundle, tmp_path):
    seed_everything(0)
    model = create_model("mmoe", noisy_bundle, embedding_dim=4, tower_hidden=[8], num_experts=2, expert_hidden=[16])
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        noisy_bundle.train, noisy_bundle.valid
    )
    imp = permutation_importance(model, noisy_bundle, n_repeats=2, seed=0)
    assert set(imp) == {"click", "purchase"}
    assert set(imp["click"]) == {"user", "item", "genres", "price", "noise"}
    for t in imp:
        assert imp[t]["user"] > imp[t]["noise"] + 0.02
        assert imp[t]["item"] > imp[t]["noise"]
    assert abs(imp["click"]["noise"]) < 0.02
    detail = permutation_importance_detail(model, noisy_bundle.valid, 2, 0, fields=["user", "noise"], max_rows=300)
    assert detail["rows"] == 300 and set(detail["mean"]["click"]) == {"user", "noise"}
    assert len(detail["values"]["click"]["user"]) == 2
    table = importance_table(imp)
    assert table.splitlines()[0].startswith("| field | click drop (rank)")
    assert "Spearman" in table
    png = plot_importance(imp, tmp_path / "imp.png")
    assert png.stat().st_size > 1000


def test_divergence_detects_opposite_rankings():
    imp = {"a": {"x": 3.0, "y": 2.0, "z": 1.0}, "b": {"x": 1.0, "y": 2.0, "z": 3.0}}
    div = divergence(imp)
    assert div["ranks"]["a"]["x"] == 1 and div["ranks"]["b"]["x"] == 3
    assert div["spearman"]["a~b"] == pytest.approx(-1.0)
    assert list(div["rank_spread"])[-1] == "y"
