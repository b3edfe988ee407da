from __future__ import annotations

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.models.dtn import parse_tsn, topological_order
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

SMALL = {
    "embedding_dim": 4,
    "tower_hidden": [8],
    "fi_dim": 16,
    "masknet_agg_dim": 16,
    "masknet_block_dim": 8,
    "masknet_hidden": [16],
    "num_buckets": 1000,
}


def _batch(bundle, n=32):
    return next(iter(BatchIterator(bundle.train, n)))


@pytest.mark.parametrize("fixture,tasks", [("tiny_bundle", 2), ("tiny_bundle_reg", 3)])
def test_shapes_and_gradients(fixture, tasks, request):
    bundle = request.getfixturevalue(fixture)
    seed_everything(0)
    model = create_model("dtn", bundle, **SMALL)
    assert model.task_branches.num_branches == tasks and model.shared_branches.num_branches == 1
    out = model(_batch(bundle))
    assert len(out.logits) == tasks and all(v.shape == (32,) for v in out.logits.values())
    model.task_losses(out, _batch(bundle)).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad and "embedding" not in n:
            assert p.grad is not None, n
    gates = model.gate_summary()
    assert set(gates) == set(model.task_names)
    # two softmaxes (self set, other set): the weights of each task sum to 2
    for g in model.last_gates.values():
        torch.testing.assert_close(g.sum(-1), torch.full((32,), 2.0))


def test_task_sensitive_prediction_is_stop_gradient(tiny_bundle):
    seed_everything(0)
    model = create_model("dtn", tiny_bundle, **SMALL)
    assert model.edges == [(1, 0)]  # purchase (cvr) uses sg(pCTR), as the code's "cvr:ctr"
    out = model(_batch(tiny_bundle))
    out.logits["purchase"].sum().backward()
    # the click tower/head produce p̂_click, used by the purchase task only through sg(): no gradient
    assert all(p.grad is None for p in model.towers["click"].parameters())
    assert all(p.grad is None for p in model.heads["click"].parameters())
    # ... but the path exists: changing the click head changes the purchase prediction
    model.eval()
    batch = _batch(tiny_bundle)
    with torch.no_grad():
        before = model(batch).logits["purchase"]
        model.heads["click"].bias += 3.0
        after = model(batch).logits["purchase"]
    assert not torch.allclose(before, after)


def test_without_tsn_click_head_does_not_affect_purchase(tiny_bundle):
    seed_everything(0)
    model = create_model("dtn", tiny_bundle, tsn="none", **SMALL).eval()
    batch = _batch(tiny_bundle)
    with torch.no_grad():
        before = model(batch).logits["purchase"]
        model.heads["click"].bias += 3.0
        torch.testing.assert_close(model(batch).logits["purchase"], before)


def test_tsn_uses_original_task_indices_for_three_tasks(tiny_bundle_reg):
    """Edge click:rating (i=0, j=2). The official code's re-indexing would pick branch 1 (purchase) instead."""
    seed_everything(0)
    model = create_model("dtn", tiny_bundle_reg, tsn=["click:rating"], **SMALL).eval()
    assert model.edges == [(0, 2)] and model.order.index(2) < model.order.index(0)
    with torch.no_grad():  # rating head outputs 0 → every rating-branch vector seen by click is multiplied by 0
        model.heads["rating"].weight.zero_()
        model.heads["rating"].bias.zero_()
    out = model(_batch(tiny_bundle_reg))
    out.logits["click"].sum().backward()

    def grads(b: int) -> float:
        """Gradient mass of branch b (rows b of the stacked dense parameters; b = 3 is the shared branch)."""
        group, k = (model.task_branches, b) if b < 3 else (model.shared_branches, b - 3)
        total = 0.0
        for name, p in group.named_parameters():
            if p.grad is None or p.grad.is_sparse:
                continue
            branch_axis = 1 if name.startswith("nets.gdcn") else 0  # GDCN stacks (layers, branches, ...)
            n = p.shape[branch_axis]
            if name.startswith("nets.masknet.block"):  # MaskBlocks: (branches · blocks, ...)
                per = n // group.num_branches
                total += float(p.grad[k * per : (k + 1) * per].abs().sum())
            else:
                total += float(p.grad.select(branch_axis, k).abs().sum())
        return total

    assert grads(2) == 0
    assert grads(1) > 0 and grads(3) > 0


def test_tsn_parsing_and_cycles():
    names = ["a", "b", "c"]
    assert parse_tsn("cascade", names) == [(1, 0), (2, 0), (2, 1)]
    assert parse_tsn("c:a,b:a", names) == [(1, 0), (2, 0)]
    assert topological_order(3, [(0, 2), (2, 1)]) == [1, 2, 0]
    with pytest.raises(ValueError, match="cycle"):
        topological_order(2, [(0, 1), (1, 0)])
    with pytest.raises(ValueError, match="task:other_task"):
        parse_tsn("a-b", names)


@pytest.mark.parametrize(
    "opts",
    [
        {"gate_from": "input"},
        {"combine": "concat"},
        {"input_norm": "batchnorm"},
        {"input_norm": "none", "fi_modules": ["gdcn", "masknet"]},
        {"fi_modules": ["memonet"], "memonet_fields": "all", "memonet_shrink": "global_attentive"},
        {"num_shared": 2},
        {"fi_modules": ["memonet"], "memonet_fields": ["genres", "user", "price"]},
    ],
)
def test_options(opts, tiny_bundle_reg):
    seed_everything(0)
    model = create_model("dtn", tiny_bundle_reg, **{**SMALL, **opts})
    out = model(_batch(tiny_bundle_reg))
    assert out.logits["rating"].shape == (32,)
    out.logits["rating"].sum().backward()


def test_learns_above_chance(tiny_bundle):
    seed_everything(0)
    model = create_model("dtn", tiny_bundle, **SMALL)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    res = evaluate(model, tiny_bundle.test)
    assert res["click"]["auc"] > 0.75 and res["purchase"]["auc"] > 0.7


def test_memonet_field_list_validated(tiny_bundle):
    with pytest.raises(ValueError, match="unknown fields"):
        create_model("dtn", tiny_bundle, memonet_fields=["user", "nope"], **SMALL)
    with pytest.raises(ValueError, match="at least two"):
        create_model("dtn", tiny_bundle, memonet_fields=["user"], **SMALL)


@pytest.mark.parametrize("opts", [{}, {"combine": "concat"}, {"gate_from": "input"}])
def test_task_input_is_the_gated_sum_of_scaled_fi_outputs(opts, tiny_bundle):
    """GN + combination (module docstring): z_t = Σ_{S_t} a_F c_F F (+ or ‖) Σ_{O_t} b_F c_F F, with a and b two
    softmaxes of the per-vector logits over the task's own and the other vectors, c the TSN scales."""
    seed_everything(0)
    model = create_model("dtn", tiny_bundle, **{**SMALL, **opts})
    h, V = model.fi_outputs(model.embed(_batch(tiny_bundle)))
    coef = torch.rand(V.shape[0], V.shape[1]) + 0.5
    for t in range(len(model.tasks)):
        if model.gate_from == "fi_output":
            w, b = model.gate_weight[t], model.gate_bias[t]
            logits = torch.relu(torch.einsum("bnd,nd->bn", V, w) * coef + b)
        else:
            logits = model.gate_input(h)[:, t * model.num_vectors : (t + 1) * model.num_vectors]
        own = model.self_mask[t]
        a = torch.softmax(logits.masked_fill(~own, float("-inf")), -1)
        o = torch.softmax(logits.masked_fill(own, float("-inf")), -1)
        scaled = coef.unsqueeze(-1) * V
        z_self, z_other = torch.einsum("bn,bnd->bd", a, scaled), torch.einsum("bn,bnd->bd", o, scaled)
        expected = z_self + z_other if model.combine == "sum" else torch.cat([z_self, z_other], 1)
        torch.testing.assert_close(model.task_input(t, h, V, coef), expected)
