from __future__ import annotations

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.models.registry import create_model
from mtlrec.models.sharing import CrossStitchUnit
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate
from tests.test_model_contract import assert_shapes_and_gradients

BASE = {"embedding_dim": 4, "tower_hidden": [8]}
CONFIGS = {
    "hard_sharing": {"bottom_hidden": [32, 16]},
    "cross_stitch": {"column_hidden": [32, 16]},
    "cross_stitch_layer": {"column_hidden": [32, 16], "stitch_mode": "layer"},
    "cross_stitch_full": {"column_hidden": [32, 16], "stitch_mode": "full"},
    "sluice": {"column_hidden": [16, 16]},
    "sluice_concat": {"column_hidden": [16, 8], "beta_mode": "concat", "num_subspaces": 4},
    "asymmetric_sharing": {"bottom_hidden": [32, 16]},
    "asymmetric_sharing_mean": {"bottom_hidden": [32, 16], "fusion": "mean"},
    "customized_sharing": {"shared_hidden": [32, 16], "specific_hidden": [16]},
    "ml_mmoe": {"num_experts": 3, "expert_hidden": [16]},
    "ml_mmoe_branch": {"num_experts": 3, "expert_hidden": [16], "selector": "branch", "num_levels": 3},
}
MAIN = ["hard_sharing", "cross_stitch", "sluice", "asymmetric_sharing", "customized_sharing", "ml_mmoe"]


def _make(key, bundle, **extra):
    name = key if key in MAIN else key.rsplit("_", 1)[0]
    return create_model(name, bundle, **BASE, **CONFIGS[key], **extra)


def _batch(bundle, n=64):
    return next(iter(BatchIterator(bundle.train, n)))


@pytest.mark.parametrize("key", [k for k in CONFIGS if k not in MAIN])
def test_variants_shapes_and_gradients(key, tiny_bundle):
    seed_everything(0)
    assert_shapes_and_gradients(_make(key, tiny_bundle), _batch(tiny_bundle))


@pytest.mark.parametrize("key", MAIN)
def test_learns_above_chance(key, tiny_bundle):
    seed_everything(0)
    model = _make(key, tiny_bundle)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_hard_sharing_is_shared_bottom(tiny_bundle):
    seed_everything(0)
    a = create_model("hard_sharing", tiny_bundle, **BASE)
    seed_everything(0)
    b = create_model("shared_bottom", tiny_bundle, **BASE)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cross_stitch_unit_init_and_modes():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 3)
    expect = torch.stack([0.9 * h[0] + 0.1 * h[1], 0.1 * h[0] + 0.9 * h[1]])
    for mode in ("unit", "layer", "full"):
        unit = CrossStitchUnit(2, 3, mode=mode)
        torch.testing.assert_close(unit(h), expect)
    unit = CrossStitchUnit(2, 3, mode="unit")
    with torch.no_grad():
        unit.alpha[1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swap the columns on hidden unit 1 only
    out = unit(h)
    torch.testing.assert_close(out[:, :, 1], h.flip(0)[:, :, 1])
    torch.testing.assert_close(out[:, :, 0], expect[:, :, 0])


def test_cross_stitch_identity_alpha_separates_tasks(tiny_bundle):
    seed_everything(0)
    model = _make("cross_stitch", tiny_bundle, stitch_self=1.0)
    out = model(_batch(tiny_bundle))
    out.logits["click"].sum().backward()
    for layer in model.columns:
        assert layer.weights[0].grad[0].abs().sum() > 0 and layer.weights[0].grad[1].abs().sum() == 0


def test_sluice_orthogonality_and_mixing(tiny_bundle):
    seed_everything(0)
    model = _make("sluice", tiny_bundle)
    w = model.columns[0].weights[0]
    g1, g2 = w[:, :, :8], w[:, :, 8:]
    manual = sum(
        (torch.einsum("tdi,tdj->tij", lay.weights[0][:, :, :8], lay.weights[0][:, :, 8:]) ** 2).sum()
        for lay in model.columns
    )
    assert g1.shape == g2.shape
    torch.testing.assert_close(model.orthogonality(), manual)
    out = model(_batch(tiny_bundle))
    torch.testing.assert_close(out.aux_losses["sluice_orthogonality"], 1e-3 * manual)
    model.eval()
    assert "sluice_orthogonality" not in model(_batch(tiny_bundle)).aux_losses
    # α = I and β on the last layer only: each task's tower reads its own column's last layer
    with torch.no_grad():
        for a in model.alphas:
            a.copy_(torch.eye(4))
        model.beta.copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    x = model.embed(_batch(tiny_bundle))
    h = model.columns[1](model.columns[0](x.flat()))
    outs = model.backbone(x)
    torch.testing.assert_close(outs[0], h[0])
    torch.testing.assert_close(outs[1], h[1])
    with pytest.raises(ValueError, match="equal"):
        create_model("sluice", tiny_bundle, column_hidden=[16, 8])


def test_asymmetric_sharing_direction(tiny_bundle):
    seed_everything(0)
    model = _make("asymmetric_sharing", tiny_bundle)
    assert model.sources == [[0], [1, 0]]
    out = model(_batch(tiny_bundle))
    out.logits["click"].sum().backward()
    g = model.bottoms.weights[0].grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() == 0  # click does not read purchase's bottom
    model.zero_grad()
    model(_batch(tiny_bundle)).logits["purchase"].sum().backward()
    g = model.bottoms.weights[0].grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0  # purchase reads both
    rev = _make("asymmetric_sharing", tiny_bundle, share_from={"click": ["purchase"]})
    assert rev.sources == [[0, 1], [1]]
    with pytest.raises(ValueError, match="unknown tasks"):
        _make("asymmetric_sharing", tiny_bundle, share_from={"click": ["nope"]})


def test_customized_sharing_shared_parameters(tiny_bundle):
    seed_everything(0)
    model = _make("customized_sharing", tiny_bundle)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.shared_bottom.parameters()}
    model(_batch(tiny_bundle)).logits["click"].sum().backward()
    g = model.specific_bottoms.weights[0].grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() == 0


def test_ml_mmoe_levels_match_a_loop(tiny_bundle):
    seed_everything(0)
    for selector in ("input", "branch"):
        model = _make("ml_mmoe", tiny_bundle, selector=selector).eval()
        x = model.embed(_batch(tiny_bundle)).flat()
        lv0, lv1 = model.levels
        e0 = lv0(x)
        b = [torch.einsum("bn,nbh->bh", g(x), e0) for g in model.gates[0]]
        ref = []
        for k, g in enumerate(model.gates[1]):
            ek = lv1(b[k])
            ref.append(torch.einsum("bn,nbh->bh", g(x if selector == "input" else b[k]), ek))
        got = model.backbone(model.embed(_batch(tiny_bundle)))
        for r, o in zip(ref, got, strict=True):
            torch.testing.assert_close(o, r)
