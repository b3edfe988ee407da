from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlrec.data.batches import Batch, BatchIterator
from mtlrec.experiment import seed_everything
from mtlrec.models.registry import create_model
from mtlrec.train.trainer import TrainConfig, Trainer
from mtlrec.train.weighting import create_weighting, list_weightings, pcgrad_project, task_gradients

SMALL = {"embedding_dim": 4, "tower_hidden": [8], "bottom_hidden": [16, 8]}
GRAD_BASED = ["gradnorm", "pcgrad"]
ALL = ["fixed", "equal", "ple_dynamic", "uncertainty", "gradnorm", "dwa", "pcgrad"]


def _model(bundle, seed=0):
    seed_everything(seed)
    return create_model("shared_bottom", bundle, **SMALL)


def _batch(bundle, n=128):
    return next(iter(BatchIterator(bundle.train, n)))


def _grads(model):
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for n, p in model.named_parameters()}


def _step_grads(model, strategy, batch):
    """Gradients a strategy leaves after one backward pass (no optimiser step)."""
    model.zero_grad(set_to_none=True)
    out = model(batch)
    losses = model.task_losses(out, batch)
    total = strategy.combine(losses, 0)
    strategy.backward(total, losses, model.shared_parameters())
    return _grads(model)


def test_registered():
    assert set(ALL) <= set(list_weightings())
    with pytest.raises(ValueError, match="unknown weighting"):
        create_weighting("nope", [1.0, 1.0])


def test_ple_dynamic_schedule():
    s = create_weighting("ple_dynamic", [1.0, 0.5], gammas=[0.9, 1.1])
    torch.testing.assert_close(s.weights(3), torch.tensor([0.9**3, 0.5 * 1.1**3]))
    torch.testing.assert_close(s.combine(torch.tensor([2.0, 4.0]), 2), torch.tensor(2 * 0.81 + 4 * 0.5 * 1.21))


def test_uncertainty_formula():
    s = create_weighting("uncertainty", [1.0, 1.0], task_types=["binary", "regression"])
    with torch.no_grad():
        s.log_vars.copy_(torch.tensor([0.3, -0.7]))
    losses = torch.tensor([0.8, 2.0])
    expect = math.exp(-0.3) * 0.8 + 0.5 * 0.3 + 0.5 * math.exp(0.7) * 2.0 + 0.5 * -0.7
    torch.testing.assert_close(s.combine(losses, 0), torch.tensor(expect))
    simple = create_weighting("uncertainty", [1.0, 1.0], form="simple", init_log_var=0.5)
    torch.testing.assert_close(simple.combine(losses, 0), torch.tensor(math.exp(-0.5) * 2.8 + 1.0))
    # d/ds (e^{-s} L + s/2) = -e^{-s} L + 1/2
    s.combine(losses, 0).backward()
    torch.testing.assert_close(
        s.log_vars.grad, torch.tensor([-math.exp(-0.3) * 0.8 + 0.5, -0.5 * math.exp(0.7) * 2.0 + 0.5])
    )


def test_uncertainty_parameters_are_trained(tiny_bundle):
    model = _model(tiny_bundle)
    tr = Trainer(model, TrainConfig(epochs=1, batch_size=256, progress=False, weighting="uncertainty"))
    before = tr.weighting.log_vars.detach().clone()
    tr.train_step(_batch(tiny_bundle, 256))
    assert not torch.equal(before, tr.weighting.log_vars.detach())
    assert any(tr.weighting.log_vars is p for o in tr.optimizers for g in o.param_groups for p in g["params"])


def test_pcgrad_projection_hand_computed():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = pcgrad_project(g, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(out.sum(0), torch.tensor([0.5, 1.5]))
    agree = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(pcgrad_project(agree), agree)
    # a projected gradient no longer conflicts with the one it was projected on
    assert out[0] @ g[1] >= -1e-6 and out[1] @ g[0] >= -1e-6


def test_pcgrad_on_model_only_changes_shared_gradients(tiny_bundle):
    model, batch = _model(tiny_bundle), _batch(tiny_bundle)
    plain = _step_grads(model, create_weighting("fixed", [1.0, 1.0]), batch)
    pc = create_weighting("pcgrad", [1.0, 1.0], seed=3)
    got = _step_grads(model, pc, batch)
    shared = {id(p) for p in model.shared_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in shared}
    assert names and all(n.startswith("bottom.") for n in names)
    for n in got:
        if n not in names:  # embedding table, towers, heads: the plain gradient of the sum
            torch.testing.assert_close(got[n], plain[n], rtol=0, atol=0, msg=n)
    # shared parameters: the sum of the projected per-task gradients
    model.zero_grad(set_to_none=True)
    out = model(batch)
    grads = task_gradients(model.task_losses(out, batch), model.shared_parameters())
    expect = pcgrad_project(grads, torch.Generator().manual_seed(3)).sum(0)
    flat = torch.cat([got[n].reshape(-1) for n, p in model.named_parameters() if id(p) in shared])
    torch.testing.assert_close(flat, expect)
    if (grads[0] @ grads[1]) < 0:  # conflicting here: the update really differs from the plain sum
        assert not torch.allclose(flat, grads.sum(0))


def test_gradnorm_balances_gradient_norms():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    s = create_weighting("gradnorm", [1.0, 1.0], alpha=0.0, grad_params="all")
    opt = torch.optim.Adam(s.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        w.grad = None
        losses = torch.stack([10.0 * (w**2).sum(), (w**2).sum()])  # gradient norms in ratio 10 : 1
        total = s.combine(losses, 0)
        s.backward(total, losses, [w])
        opt.step()
    s.renormalise()
    tw = s.weights(0)
    torch.testing.assert_close(tw.sum(), torch.tensor(2.0))
    # w_1 ‖∇L_1‖ ≈ w_2 ‖∇L_2‖  ⇒  w_1 / w_2 ≈ 1/10
    assert abs(tw[0] / tw[1] - 0.1) < 0.02, tw
    # the model parameter got the weighted sum's gradient, with w held constant
    torch.testing.assert_close(w.grad, (tw[0] * 20 + tw[1] * 2) * w.detach(), rtol=0.05, atol=1e-3)


def test_gradnorm_target_uses_loss_ratios():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    s = create_weighting("gradnorm", [1.0, 1.0], alpha=1.0)
    s.combine(torch.tensor([1.0, 1.0]), 0)  # L(0) = 1 for both
    losses = torch.stack([(w * torch.tensor([1.0, 0.0])).sum() * 2.0, (w * torch.tensor([0.0, 1.0])).sum()])
    total = s.combine(losses, 0)  # L = (2, 1): r = (4/3, 2/3); norms (2, 1); Ḡ = 1.5; targets (2, 1)
    s.backward(total, losses, [w])
    # G = (2 w_1, w_2) equals its target exactly: the L_grad subgradient is sign(0)=0
    torch.testing.assert_close(s.task_w.grad, torch.zeros(2))


def test_gradnorm_leaves_model_gradients_plain(tiny_bundle):
    model, batch = _model(tiny_bundle), _batch(tiny_bundle)
    plain = _step_grads(model, create_weighting("fixed", [1.0, 1.0]), batch)
    for mode in ("all", "last"):
        s = create_weighting("gradnorm", [1.0, 1.0], grad_params=mode)
        got = _step_grads(model, s, batch)  # w = 1 at the first step: the plain gradient everywhere
        for n in plain:
            torch.testing.assert_close(got[n], plain[n], rtol=0, atol=0, msg=n)
        assert s.task_w.grad is not None and s.task_w.grad.abs().sum() > 0
    assert [p.shape for p in s.select(model.shared_parameters())] == [model.bottom[2].weight.shape]


def test_dwa_weights_from_loss_ratios():
    s = create_weighting("dwa", [1.0, 1.0], temperature=2.0)
    torch.testing.assert_close(s.weights(0), torch.ones(2))
    s.on_epoch_end(torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(s.weights(1), torch.ones(2))
    s.on_epoch_end(torch.tensor([0.5, 2.0]))
    e1, e2 = math.exp(0.5 / 2), math.exp(1.0 / 2)
    torch.testing.assert_close(s.weights(2), torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]))
    s.on_epoch_end(torch.tensor([0.5, 1.0]))  # only the last two epochs count: r = (1, 0.5)
    torch.testing.assert_close(s.weights(3), torch.tensor([2 * e2 / (e1 + e2), 2 * e1 / (e1 + e2)]))


def test_dwa_gets_epoch_losses_from_trainer(tiny_bundle):
    model = _model(tiny_bundle)
    tr = Trainer(model, TrainConfig(epochs=3, batch_size=256, progress=False, weighting="dwa", patience=10))
    tr.fit(tiny_bundle.train, tiny_bundle.valid)
    assert len(tr.weighting.history) == 2
    w = tr.weighting.weights(3)
    assert not torch.allclose(w, torch.ones(2)) and abs(float(w.sum()) - 2.0) < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_masked_rows_do_not_change_the_update(name, tiny_bundle):
    full = _batch(tiny_bundle, 256)
    out_space = full.masks[:, 1] == 0
    assert out_space.any()
    flipped = copy.deepcopy(full)
    flipped.labels[out_space, 1] = 1.0 - flipped.labels[out_space, 1]
    params = []
    for b in (full, flipped):
        model = _model(tiny_bundle)
        tr = Trainer(model, TrainConfig(progress=False, weighting=name))
        for _ in range(2):
            tr.train_step(Batch(b.cat, b.num, b.multi, b.labels, b.masks))
        params.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_exact_resume(name, tiny_bundle, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=256, seed=1, progress=False, patience=10, weighting=name)
    full = _model(tiny_bundle)
    ta = Trainer(full, cfg, tmp_path / "a")
    ta.fit(tiny_bundle.train, tiny_bundle.valid)
    part = _model(tiny_bundle)
    Trainer(part, cfg, tmp_path / "b").fit(tiny_bundle.train, tiny_bundle.valid, max_steps=16)  # epoch 3 start
    resumed = _model(tiny_bundle, seed=5)
    tb = Trainer(resumed, cfg, tmp_path / "b")
    assert tb.resume()
    tb.fit(tiny_bundle.train, tiny_bundle.valid)
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    sa, sb = ta.weighting.state_dict(), tb.weighting.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        va, vb = sa[k], sb[k]
        if isinstance(va, list):
            assert all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
        else:
            assert torch.equal(va, vb), k
