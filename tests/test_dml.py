from __future__ import annotations

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.errors import UserError
from mtlrec.models.registry import create_model, list_models
from mtlrec.plugins.dml import CTFM, GKD, VARIANTS, resolve_config
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

SMALL = {"embedding_dim": 4, "tower_hidden": [8]}
BACKBONES = [m for m in ("shared_bottom", "mmoe", "cgc", "ple") if m in list_models()]


def first_batch(bundle, n: int = 64):
    return next(iter(BatchIterator(bundle.train, n)))


def build(name, bundle, seed: int = 0, **params):
    seed_everything(seed)
    return create_model(name, bundle, **SMALL, **params)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("variant", ["ctfm", "ctfm_no_sg", "gkd", "dml"])
def test_every_parameter_gets_a_gradient(name, variant, tiny_bundle):
    model = build(name, tiny_bundle, dml={"variant": variant})
    kinds = {type(p).__name__ for p in model.plugins}
    assert kinds == {"ctfm": {"CTFM"}, "ctfm_no_sg": {"CTFM"}, "gkd": {"GKD"}, "dml": {"CTFM", "GKD"}}[variant]
    batch = first_batch(tiny_bundle)
    out = model(batch)
    assert all(v.shape == (64,) and torch.isfinite(v).all() for v in out.logits.values())
    model.task_losses(out, batch).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad and "embedding.table" not in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_all_five_variants_and_switches():
    assert set(VARIANTS) == {"plain", "ctfm", "ctfm_no_sg", "gkd", "dml"}
    assert resolve_config(True)["ctfm"] and resolve_config(True)["gkd"]
    assert resolve_config("ctfm_no_sg")["ctfm_stop_gradient"] is False
    cfg = resolve_config({"ctfm": True, "gkd": True})
    assert cfg["ctfm_stop_gradient"] and cfg["gkd_stop_gradient"]
    with pytest.raises(UserError, match="dml.variant: unknown DML variant 'nope'"):
        resolve_config("nope")
    with pytest.raises(UserError, match="dml: unknown key 'bogus'"):
        resolve_config({"ctfm": True, "bogus": 1})


@pytest.mark.parametrize("name", BACKBONES)
def test_plain_is_bit_identical(name, tiny_bundle):
    ref = build(name, tiny_bundle, seed=3)
    plain = build(name, tiny_bundle, seed=3, dml={"variant": "plain"})
    assert len(plain.plugins) == 0
    sa, sb = ref.state_dict(), plain.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    results = []
    for m in (ref, plain):
        seed_everything(3)
        Trainer(m, TrainConfig(epochs=1, batch_size=256, progress=False, seed=3)).fit(
            tiny_bundle.train, tiny_bundle.valid
        )
        results.append(evaluate(m, tiny_bundle.test))
    assert results[0] == results[1]


def test_plugin_leaves_backbone_init_unchanged(tiny_bundle):
    """The plug-in is built after the model, so +CTFM/+GKD runs share the plain run's initial backbone."""
    ref = build("mmoe", tiny_bundle, seed=5).state_dict()
    dml = build("mmoe", tiny_bundle, seed=5, dml="dml").state_dict()
    assert all(torch.equal(ref[k], dml[k]) for k in ref)
    assert any(k.startswith("plugins.") for k in dml)


def _capture_tower_inputs(model):
    store: list[torch.Tensor] = []
    original = model.backbone

    def backbone(x):
        outs = [o.clone() for o in original(x)]  # distinct nodes even where a backbone shares one tensor
        for o in outs:
            o.retain_grad()
        store[:] = outs
        return outs

    model.backbone = backbone
    return store


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_ctfm_stop_gradient_blocks_other_tower_inputs(name, stop_gradient, tiny_bundle):
    model = build(name, tiny_bundle, dml={"ctfm": True, "ctfm_stop_gradient": stop_gradient})
    inputs = _capture_tower_inputs(model)
    batch = first_batch(tiny_bundle)
    out = model(batch)
    out.logits["click"].sum().backward()  # task 1's loss only
    other = inputs[1].grad
    reaches = other is not None and bool(other.abs().sum() > 0)
    assert reaches is (not stop_gradient)
    assert inputs[0].grad is not None and inputs[0].grad.abs().sum() > 0


def test_ctfm_module_gradients_exact():
    torch.manual_seed(0)
    for sg in (True, False):
        m = CTFM([5, 5, 5], stop_gradient=sg)
        es = [torch.randn(7, 5, requires_grad=True) for _ in range(3)]
        u = m.on_tower_inputs(es)
        u[1].sum().backward()
        assert es[1].grad.abs().sum() > 0
        for j in (0, 2):
            reaches = es[j].grad is not None and bool(es[j].grad.abs().sum() > 0)
            assert reaches is (not sg)
        assert m.query.weight.grad is not None and m.key.weight.grad is not None


def test_ctfm_matches_reference_formula():
    torch.manual_seed(0)
    m = CTFM([4, 4])
    e = [torch.randn(3, 4), torch.randn(3, 4)]
    x = torch.stack(e, 1) + m.task_embedding
    q, k, v = (torch.relu(lin(x)) for lin in (m.query, m.key, m.value))
    a = torch.softmax(torch.einsum("btd,bsd->bts", q, k) / 2.0, -1)
    ref = torch.einsum("bts,bsd->btd", a, v)
    out = m.on_tower_inputs(e)
    for t in range(2):
        torch.testing.assert_close(out[t], e[t] + ref[:, t])


def test_ctfm_unequal_widths_projects():
    torch.manual_seed(0)
    m = CTFM([4, 6, 3])
    assert m.project and m.dim == 6
    es = [torch.randn(5, d, requires_grad=True) for d in (4, 6, 3)]
    u = m.on_tower_inputs(es)
    assert [t.shape for t in u] == [(5, 4), (5, 6), (5, 3)]
    sum(t.sum() for t in u).backward()
    assert all(p.grad is not None for p in m.parameters())
    assert not CTFM([4, 4]).project and CTFM([4, 4], projection="always").project


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_gkd_global_knowledge_blocks_other_towers(stop_gradient, tiny_bundle):
    model = build("mmoe", tiny_bundle, dml={"gkd": True, "gkd_stop_gradient": stop_gradient})
    batch = first_batch(tiny_bundle)
    model(batch).logits["click"].sum().backward()
    grads = [p.grad for p in model.towers["purchase"].parameters()]
    reaches = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert reaches is (not stop_gradient)
    assert all(p.grad is not None for p in model.towers["click"].parameters())


def test_gkd_module_formula():
    torch.manual_seed(0)
    m = GKD([3, 2])
    h = [torch.randn(4, 3), torch.randn(4, 2)]
    z = [torch.zeros(4), torch.ones(4)]
    out = m.on_logits(h, z)
    g = torch.cat(h, -1)
    head = m.heads[1]
    i = torch.relu(head.info(g))
    w = torch.sigmoid(head.weight[0](torch.cat([h[1], i], -1)))
    torch.testing.assert_close(out[1], 1 + (w * i) @ head.out.weight.squeeze(0))
    assert head.out.bias is None
    deeper = GKD([3, 2], weight_layers=[5])
    assert len(deeper.heads[0].weight) == 4  # Linear, ReLU, Linear, Sigmoid


def test_task_embedding_l2_aux_loss(tiny_bundle):
    model = build("shared_bottom", tiny_bundle, dml={"variant": "ctfm", "task_embedding_l2": 0.1})
    out = model(first_batch(tiny_bundle))
    tau = model.plugins[0].task_embedding
    torch.testing.assert_close(out.aux_losses["dml_task_emb_l2"], 0.1 * tau.pow(2).sum())


def test_deterministic(tiny_bundle):
    outs = []
    for _ in range(2):
        model = build("mmoe", tiny_bundle, seed=7, dml={"variant": "dml", "dropout": 0.1})
        Trainer(model, TrainConfig(epochs=1, batch_size=256, progress=False, seed=7)).fit(
            tiny_bundle.train, tiny_bundle.valid
        )
        outs.append(evaluate(model, tiny_bundle.test))
    assert outs[0] == outs[1]


def test_learns_above_chance(tiny_bundle):
    model = build("mmoe", tiny_bundle, seed=0, dml="dml")
    Trainer(model, TrainConfig(epochs=3, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_regression_task(tiny_bundle_reg):
    model = build("mmoe", tiny_bundle_reg, dml="dml")
    batch = first_batch(tiny_bundle_reg)
    out = model(batch)
    assert set(out.logits) == {"click", "purchase", "rating"}
    model.task_losses(out, batch).sum().backward()
    assert all(p.grad is not None for p in model.plugins.parameters())


def test_plugin_parameters_are_not_shared(tiny_bundle):
    """GKD heads and CTFM task embeddings are task-specific: gradient-based weighting must not act on them."""
    model = build("mmoe", tiny_bundle, dml={"variant": "dml"})
    shared = {id(p) for p in model.shared_parameters()}
    assert shared and not any(id(p) in shared for p in model.plugins.parameters())
    assert all(id(p) in shared for p in model.experts.parameters())
