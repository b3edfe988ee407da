from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.errors import UserError
from mtlrec.layers.gates import Gate
from mtlrec.models.registry import create_model
from mtlrec.plugins.virtual_gradient import VARIANTS, scale_grad, task_relevance, vg_gamma
from mtlrec.seeding import seed_everything

SMALL = {"embedding_dim": 4, "tower_hidden": [8], "num_experts": 3, "expert_hidden": [8]}


def _gamma_reference(x: float, y: np.ndarray, variant: str) -> np.ndarray:
    """Independent numpy transcription of MODELS.md A.3.6 (x relevance, y gate difference)."""
    mode, fit = variant.split("_")
    y = np.minimum(1.0, y)
    s = (x + y) / 2 if mode == "add" else x * y
    u = 2 * s - 1
    return {"abs": 2 * abs(u), "cos": 1 - np.cos(np.pi * u), "square": 2 * u**2, "sqrt": 2 * np.sqrt(abs(u))}[fit]


def test_eq9_and_variant_ranges():
    x, y = torch.meshgrid(torch.linspace(0, 1, 21), torch.linspace(0, 1, 21), indexing="ij")
    eq9 = torch.cos((x + y) * math.pi) + 1
    torch.testing.assert_close(vg_gamma(x, y, "add_cos"), eq9, atol=1e-5, rtol=0)
    for v in VARIANTS:
        g = vg_gamma(x, y, v)
        assert g.min() >= 0 and g.max() <= 2 + 1e-6
        assert np.allclose(g.numpy(), _gamma_reference(x.numpy(), y.numpy(), v), atol=1e-5)
    # balance line: additive maps vanish on x + y = 1, multiplicative ones on x·y = 1/2
    assert vg_gamma(torch.tensor(0.3), torch.tensor(0.7), "add_sqrt") < 1e-3
    assert vg_gamma(torch.tensor(1.0), torch.tensor(0.5), "mul_abs") < 1e-6
    with pytest.raises(UserError, match="add_tanh"):
        vg_gamma(x, y, "add_tanh")


def test_relevance_matches_numpy_and_handles_constant_labels():
    rng = np.random.default_rng(0)
    lab = (rng.random((200, 3)) < [0.5, 0.3, 0.6]).astype(np.float32)
    lab[:, 2] = np.where(rng.random(200) < 0.8, lab[:, 0], lab[:, 2])
    phi = task_relevance(torch.from_numpy(lab))
    assert np.allclose(phi.numpy(), np.abs(np.corrcoef(lab.T)), atol=1e-5)
    cos = task_relevance(torch.from_numpy(lab), kind="cosine").numpy()
    norm = np.linalg.norm(lab, axis=0)
    assert np.allclose(cos, (lab.T @ lab) / np.outer(norm, norm), atol=1e-5)
    lab[:, 1] = 0.0  # zero variance / zero norm -> 0
    for kind in ("pearson", "cosine"):
        phi = task_relevance(torch.from_numpy(lab), kind=kind)
        assert phi[0, 1] == 0 and phi[1, 2] == 0 and phi[1, 1] == 1
    # masks: only rows observed by both tasks count
    masks = np.ones_like(lab)
    masks[:100, 2] = 0
    lab[:, 1] = rng.random(200) < 0.5
    phi = task_relevance(torch.from_numpy(lab), torch.from_numpy(masks))
    assert np.isclose(phi[0, 2].item(), abs(np.corrcoef(lab[100:, 0], lab[100:, 2])[0, 1]), atol=1e-5)


def test_scale_grad_is_identity_forward():
    x = torch.randn(5, requires_grad=True)
    s = torch.rand(5)
    y = scale_grad(x, s)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, s)


def _capture_gate_weights(model):
    """Put a hook in front of every gate's hooks that keeps the raw softmax weights and their gradient."""
    store = []

    def keep(gate, w):
        w.retain_grad()
        store.append(w)
        return w

    for m in model.modules():
        if isinstance(m, Gate):
            m.weight_hooks.insert(0, keep)
    return store


def _run(tiny_bundle, vg, batch):
    seed_everything(0)
    model = create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient=vg)
    model.train()
    store = _capture_gate_weights(model)
    out = model(batch)
    model.task_losses(out, batch).sum().backward()
    grads = {n: p.grad.to_dense().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, store, grads


@pytest.mark.parametrize("variant,relevance", [("add_sqrt", "pearson"), ("mul_abs", "cosine"), ("add_cos", "pearson")])
def test_vg_scales_gate_gradients_exactly(tiny_bundle, variant, relevance):
    batch = next(iter(BatchIterator(tiny_bundle.train, 128)))
    out0, w0, g0 = _run(tiny_bundle, None, batch)
    out1, w1, g1 = _run(tiny_bundle, {"variant": variant, "relevance": relevance}, batch)
    for t in out0.logits:  # forward values bit-identical
        assert torch.equal(out0.logits[t], out1.logits[t])
    # independent Γ from all rows' labels (default rows="all")
    lab = batch.labels.numpy()
    a, b = lab[:, 0], lab[:, 1]
    x = abs(np.corrcoef(a, b)[0, 1]) if relevance == "pearson" else abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b)
    ga, gb = w1[0].detach().numpy(), w1[1].detach().numpy()
    gamma = _gamma_reference(x, np.abs(ga - gb), variant)
    for t in range(2):
        np.testing.assert_allclose(w1[t].grad.numpy(), w0[t].grad.numpy() * gamma, rtol=1e-4, atol=1e-9)
        assert not np.allclose(w1[t].grad.numpy(), w0[t].grad.numpy())
    for n in g0:  # experts, towers and heads get the same gradient; gates (and embeddings through them) differ
        if n.startswith(("experts", "towers", "heads")):
            assert torch.equal(g0[n], g1[n]), n
        if n.startswith("gates"):
            assert not torch.allclose(g0[n], g1[n]), n


def test_vg_inactive_in_eval_and_no_grad(tiny_bundle):
    seed_everything(0)
    model = create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient="add_sqrt")
    batch = next(iter(BatchIterator(tiny_bundle.train, 64)))
    model.eval()
    model(batch)
    assert model.virtual_gradient_plugin.record is None
    model.train()
    with torch.no_grad():
        model(batch)
    assert model.virtual_gradient_plugin.record is None
    model(batch)
    assert model.virtual_gradient_plugin.record is not None
    assert len(model.virtual_gradient_plugin.groups) == 1 and len(model.virtual_gradient_plugin.groups[0]) == 2


def test_vg_spec_errors(tiny_bundle):
    with pytest.raises(UserError, match="virtual_gradient.variant: unknown virtual-gradient variant 'nope'"):
        create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient={"variant": "nope"})
    with pytest.raises(UserError, match="virtual_gradient: unknown key 'varient' \\(did you mean 'variant'\\?\\)"):
        create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient={"varient": "add_abs"})


def test_vg_trains(tiny_bundle):
    from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

    seed_everything(0)
    model = create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient={"variant": "add_sqrt", "ema": 0.9})
    Trainer(model, TrainConfig(epochs=3, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_vg_on_other_models_and_reconfigure(tiny_bundle):
    import copy

    kw = {"embedding_dim": 4, "num_dnn_experts": 2, "dnn_hidden": [8], "cross_layers": 1, "fint_layers": 1}
    dephn = create_model("dephn", tiny_bundle, **kw, virtual_gradient={"variant": "mul_cos", "relevance": "cosine"})
    vg = dephn.virtual_gradient_plugin
    assert (vg.variant, vg.relevance) == ("mul_cos", "cosine")
    assert all(len(g.weight_hooks) == 1 for g in dephn.gates)  # reconfigured, not installed twice
    mt = create_model("mt_phn", tiny_bundle, **kw, virtual_gradient=True)
    assert [list(g) for g in mt.virtual_gradient_plugin.groups] == [list(mt.gates)]
    omoe = create_model("omoe", tiny_bundle, **SMALL, virtual_gradient=True)
    assert omoe.virtual_gradient_plugin.groups == []  # one gate: nothing to compare
    clone = copy.deepcopy(dephn)
    batch = next(iter(BatchIterator(tiny_bundle.train, 64)))
    clone.task_losses(clone(batch), batch).sum().backward()
    assert all(g.theta.grad is not None for g in clone.gates)


@pytest.mark.parametrize("name", ["cgc", "ple"])
def test_vg_on_cgc_ple_task_gates(name, tiny_bundle):
    batch = next(iter(BatchIterator(tiny_bundle.train, 64)))
    runs = []
    for vg in (None, "add_sqrt"):
        seed_everything(0)
        model = create_model(name, tiny_bundle, embedding_dim=4, tower_hidden=[8], virtual_gradient=vg)
        out = model(batch)
        model.task_losses(out, batch).sum().backward()
        runs.append((model, out))
    (m0, o0), (m1, o1) = runs
    assert all(torch.equal(o0.logits[t], o1.logits[t]) for t in o0.logits)
    groups = m1.virtual_gradient_plugin.groups
    task_gates = [list(level.task_gates) for level in m1.levels]
    assert groups == task_gates  # one group of T task gates per level; the shared gate is left alone
    for (n, p0), p1 in zip(m0.named_parameters(), m1.parameters(), strict=True):
        if "task_gates" in n:
            assert not torch.allclose(p0.grad, p1.grad), n
        elif n.startswith("towers") or n.startswith("heads"):
            assert torch.equal(p0.grad, p1.grad), n
