from __future__ import annotations

import math

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.layers.routing import HardConcreteGate, RoutedSubnetworks
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

MODELS = ["snr_trans", "snr_aver", "mssm"]
SMALL = {"embedding_dim": 4, "tower_hidden": [8]}


def test_gate_stochastic_in_train_deterministic_in_eval():
    torch.manual_seed(0)
    g = HardConcreteGate((4, 3))
    g.train()
    a, b = g(), g()
    assert a.shape == (4, 3) and not torch.equal(a, b)
    assert ((a >= 0) & (a <= 1)).all()
    assert g(5).shape == (5, 4, 3)
    g.eval()
    c, d = g(), g()
    assert torch.equal(c, d)
    expected = (torch.sigmoid(g.log_alpha) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(c, expected)


def test_gate_saturates_exactly_and_matches_probability():
    g = HardConcreteGate(1)
    with torch.no_grad():
        g.log_alpha.fill_(0.7)
    torch.manual_seed(1)
    z = g.sample(200_000)
    # exact zeros and ones occur (the stretch), and P(z > 0) matches the closed form
    assert (z == 0).any() and (z == 1).any()
    p_open = torch.sigmoid(torch.tensor(0.7 - (2 / 3) * math.log(0.1 / 1.1)))
    assert abs((z > 0).float().mean() - p_open) < 5e-3
    torch.testing.assert_close(g.open_probability(), p_open.reshape(1))


@pytest.mark.parametrize("name", MODELS)
def test_l0_penalty_matches_closed_form(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle, l0_weight=0.01, **SMALL)
    batch = next(iter(BatchIterator(tiny_bundle.train, 32)))
    out = model(batch)
    key = "mssm_l0" if name == "mssm" else "snr_l0"
    gates = [m for m in model.modules() if isinstance(m, HardConcreteGate)]
    assert len(gates) == (3 if name == "mssm" else 2)
    shift = (2 / 3) * math.log(0.1 / 1.1)
    closed = 0.01 * sum(torch.sigmoid(g.log_alpha - shift).sum() for g in gates)
    torch.testing.assert_close(out.aux_losses[key], closed)
    out.aux_losses[key].backward()
    assert all(g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0 for g in gates)
    assert (
        create_model(name, tiny_bundle, l0_weight=0.0, **({"field_l0_weight": 0.0} if name == "mssm" else {}))(
            batch
        ).aux_losses
        == {}
    )


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic_and_train_is_not(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle, **SMALL)
    batch = next(iter(BatchIterator(tiny_bundle.train, 64)))
    model.eval()
    with torch.no_grad():
        a, b = model(batch).logits["click"], model(batch).logits["click"]
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(batch).logits["click"], model(batch).logits["click"]
    assert not torch.equal(c, d)


@pytest.mark.parametrize("name", MODELS)
def test_learns_above_chance(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle, **SMALL)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_routing_matches_explicit_sum():
    torch.manual_seed(0)
    for routing in ("trans", "aver"):
        r = RoutedSubnetworks(5, [3], [[4]], 2, routing=routing).eval()
        x = torch.randn(7, 5)
        u = r.levels[0](x)  # (3, 7, 4)
        z = r.gates[0]()
        want = []
        for i in range(2):
            terms = [z[i, j] * (u[j] @ r.transforms[0][i, j] if routing == "trans" else u[j]) for j in range(3)]
            want.append(sum(terms))
        torch.testing.assert_close(r(x), torch.stack(want))


def test_per_example_gates(tiny_bundle):
    seed_everything(0)
    model = create_model("snr_trans", tiny_bundle, gate_sampling="example", **SMALL)
    batch = next(iter(BatchIterator(tiny_bundle.train, 16)))
    model(batch).logits["click"].sum().backward()
    assert model.router.gates[0].log_alpha.grad is not None


@pytest.mark.parametrize("mode", ["cell", "task", "none"])
def test_mssm_field_mask_modes(mode, tiny_bundle):
    seed_everything(0)
    model = create_model("mssm", tiny_bundle, field_mask=mode, **SMALL)
    batch = next(iter(BatchIterator(tiny_bundle.train, 16)))
    out = model(batch)
    assert out.logits["purchase"].shape == (16,)
    k = {"cell": 3, "task": 2, "none": 0}[mode]
    assert model.field_gate_values().shape == (k, model.num_fields)


def test_mssm_closed_field_gate_removes_field(tiny_bundle):
    """A field whose gate is shut in every mask cannot influence the eval-mode prediction."""
    seed_everything(0)
    model = create_model("mssm", tiny_bundle, **SMALL).eval()
    with torch.no_grad():
        model.field_gates.log_alpha[:, 0] = -20.0
    batch = next(iter(BatchIterator(tiny_bundle.test, 32)))
    other = type(batch)(batch.cat.clone(), batch.num, batch.multi, batch.labels, batch.masks)
    other.cat[:, 0] = (other.cat[:, 0] + 1) % 5
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits["click"], model(other).logits["click"])
        model.field_gates.log_alpha[:, 0] = 5.0
        assert not torch.allclose(model(batch).logits["click"], model(other).logits["click"])
