from __future__ import annotations

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

CORE = ["single_task", "shared_bottom", "omoe", "mmoe"]
SMALL = {"embedding_dim": 4, "tower_hidden": [8]}


@pytest.mark.parametrize("name", CORE)
def test_learns_above_chance(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle, **SMALL)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_single_task_shares_nothing(tiny_bundle):
    seed_everything(0)
    model = create_model("single_task", tiny_bundle, **SMALL)
    batch = next(iter(BatchIterator(tiny_bundle.train, 64)))
    out = model(batch)
    out.logits["click"].sum().backward()
    grad = model.embedding.table.weight.grad.to_dense()
    assert grad[:, :4].abs().sum() > 0 and grad[:, 4:].abs().sum() == 0
    assert all(p.grad is None for p in model.bottoms[1].parameters())


def test_batched_experts_match_loop():
    from mtlrec.layers.experts import BatchedExperts

    torch.manual_seed(0)
    ex = BatchedExperts(3, 5, [4, 2])
    x = torch.randn(6, 5)
    out = ex(x)
    for i in range(3):
        h = torch.relu(x @ ex.weights[0][i] + ex.biases[0][i])
        h = torch.relu(h @ ex.weights[1][i] + ex.biases[1][i])
        torch.testing.assert_close(out[i], h)
