"""CGC, PLE, ESMM and AITM: the core model checks plus each paper's defining equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlrec.data.batches import BatchIterator
from mtlrec.errors import UserError
from mtlrec.models.aitm import AITAttention, calibrator_loss
from mtlrec.models.base import masked_task_loss
from mtlrec.models.esmm import ctcvr_bce, ctcvr_log_probs, log1mexp
from mtlrec.models.ple import ExtractionLevel
from mtlrec.models.registry import create_model
from mtlrec.schema import TaskSpec
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

MTL = ["cgc", "ple", "esmm", "aitm"]
SMALL = {"embedding_dim": 4, "tower_hidden": [8]}
EXTRA = {"cgc": {"expert_hidden": [16]}, "ple": {"expert_hidden": [16]}, "esmm": {}, "aitm": {}}


def build(name, bundle, **kw):
    return create_model(name, bundle, **{**SMALL, **EXTRA[name], **kw})


def first_batch(bundle, n=64):
    return next(iter(BatchIterator(bundle.train, n)))


@pytest.mark.parametrize("name", MTL)
def test_learns_above_chance(name, tiny_bundle):
    seed_everything(0)
    model = build(name, tiny_bundle)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


# ---- CGC / PLE ---------------------------------------------------------------------------------------------------
def test_ple_levels_and_shared_gates(tiny_bundle):
    seed_everything(0)
    model = build("ple", tiny_bundle, num_levels=3, num_specific_experts=2, num_shared_experts=3)
    assert len(model.levels) == 3
    n_all = 2 * 2 + 3
    first, last = model.levels[0], model.levels[-1]
    assert first.experts.num_experts == n_all  # the shared count really is num_shared_experts (not the DeepCTR bug)
    assert first.shared_gate is not None and model.levels[1].shared_gate is not None
    assert last.shared_gate is None
    batch = first_batch(tiny_bundle, 32)
    x = model.embed(batch).flat()
    assert first.shared_gate(x).shape == (32, n_all)  # the shared gate sees ALL experts of the level
    assert all(g(x).shape == (32, 2 + 3) for g in first.task_gates)  # a task gate: its own + shared experts
    assert model.levels[1].experts.weights[0].shape[1] == first.output_dim


def test_extraction_level_matches_loop_reference():
    """Each expert reads its branch's input, each task gate mixes [own experts, shared experts] with its branch's
    input as selector, the shared gate mixes all experts with the shared input as selector (PLE eq. 5)."""
    torch.manual_seed(0)
    T, m, ms, d = 3, 2, 1, 5
    lvl = ExtractionLevel(T, d, num_specific=m, num_shared=ms, expert_hidden=[4], shared_gate=True)
    xs = [torch.randn(6, d) for _ in range(T)]
    xsh = torch.randn(6, d)
    *outs, shared = lvl(torch.stack([*xs, xsh]))

    def expert(i, x):
        return torch.relu(x @ lvl.experts.weights[0][i] + lvl.experts.biases[0][i])

    branch = [k for k in range(T) for _ in range(m)] + [T] * ms
    inputs = [*xs, xsh]
    e = [expert(i, inputs[b]) for i, b in enumerate(branch)]
    for k in range(T):
        w = torch.softmax(lvl.task_gates[k].net(xs[k]), -1)
        own = e[k * m : (k + 1) * m] + e[T * m :]
        ref = sum(w[:, i : i + 1] * own[i] for i in range(m + ms))
        torch.testing.assert_close(outs[k], ref)
    w = torch.softmax(lvl.shared_gate.net(xsh), -1)
    torch.testing.assert_close(shared, sum(w[:, i : i + 1] * e[i] for i in range(len(e))))
    # with one input for every branch the fast path (one GEMM) gives the same result
    torch.testing.assert_close(lvl(xsh), lvl(torch.stack([xsh] * (T + 1))))


def test_ple_single_level_is_cgc(tiny_bundle):
    seed_everything(3)
    ple = build("ple", tiny_bundle, num_levels=1, num_specific_experts=2, num_shared_experts=1)
    seed_everything(3)
    cgc = build("cgc", tiny_bundle, num_specific_experts=2, num_shared_experts=1)
    a, b = ple.state_dict(), cgc.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ple.levels[0].shared_gate is None
    batch = first_batch(tiny_bundle)
    for t in ("click", "purchase"):
        torch.testing.assert_close(ple(batch).logits[t], cgc(batch).logits[t])
    with pytest.raises(UserError, match="model 'cgc': unknown parameter 'num_levels'"):
        build("cgc", tiny_bundle, num_levels=2)


def test_ple_level_two_reads_previous_branch_outputs(tiny_bundle):
    """Level 2's task-k experts and gate read g^{k,1}; its shared experts read g^{s,1}, the level-1 shared gate's
    mix of ALL level-1 experts. So the click output depends on the level-1 shared gate but not on the level-1
    purchase gate."""
    seed_everything(0)
    model = build("ple", tiny_bundle, num_levels=2, num_specific_experts=1, num_shared_experts=1)
    batch = first_batch(tiny_bundle)
    model(batch).logits["click"].sum().backward()
    lvl1 = model.levels[0]
    # task 2's level-1 gate only shapes g^{2,1}, which task 1 never reads
    assert all(p.grad is None or not p.grad.any() for p in lvl1.task_gates[1].parameters())
    # the shared gate of level 1 feeds level-2 shared experts, which task 1's level-2 gate mixes
    assert all(p.grad is not None and p.grad.any() for p in lvl1.shared_gate.parameters())
    assert all(p.grad is not None and p.grad.any() for p in lvl1.task_gates[0].parameters())


# ---- ESMM --------------------------------------------------------------------------------------------------------
def test_log_space_helpers():
    x = -torch.logspace(-12, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(-torch.expm1(x)))
    a = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0, 200.0])
    b = torch.tensor([5.0, 1.0, 0.0, -4.0, 30.0, 200.0])
    log_p, log_1mp = ctcvr_log_probs(a, b)
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    torch.testing.assert_close(log_p.double(), torch.log(p), rtol=1e-5, atol=1e-6)
    finite = p < 1 - 1e-6
    torch.testing.assert_close(log_1mp.double()[finite], torch.log1p(-p)[finite], rtol=1e-4, atol=1e-6)
    assert torch.isfinite(log_1mp).all()  # p rounds to 1 for (40, 30) and (200, 200): still finite
    loss = ctcvr_bce(a, b, torch.zeros(6))
    assert torch.isfinite(loss).all() and loss[-1] > 150


def test_esmm_ctcvr_is_product_and_loss_is_eq3(tiny_bundle):
    seed_everything(0)
    model = build("esmm", tiny_bundle)
    batch = first_batch(tiny_bundle, 256)
    out = model(batch)
    p_ctr, p_cvr = torch.sigmoid(out.logits["click"]), torch.sigmoid(out.logits["purchase"])
    torch.testing.assert_close(torch.sigmoid(out.extras["ctcvr"]), p_ctr * p_cvr)

    click, conv = batch.labels[:, 0], batch.labels[:, 1]
    assert 0 < batch.masks[:, 1].sum() < len(batch)  # purchase is declared on the click space only
    ctcvr = click * conv
    eq3_ctr = F.binary_cross_entropy(p_ctr, click)
    eq3_ctcvr = F.binary_cross_entropy(p_ctr * p_cvr, ctcvr)  # over ALL impressions
    losses = model.task_losses(out, batch)
    torch.testing.assert_close(losses, torch.stack([eq3_ctr, eq3_ctcvr]))

    # the direct CVR BCE (on the click space) is not part of the loss
    direct = masked_task_loss(model.tasks[1], out.logits["purchase"], conv, batch.masks[:, 1])
    assert not torch.isclose(losses[1], direct)
    model.zero_grad()
    losses.sum().backward()
    g_loss = model.heads["purchase"].weight.grad.clone()
    model.zero_grad()
    out = model(batch)
    p = torch.sigmoid(out.logits["click"]) * torch.sigmoid(out.logits["purchase"])
    F.binary_cross_entropy(p, ctcvr).backward()
    torch.testing.assert_close(g_loss, model.heads["purchase"].weight.grad)


def test_esmm_conversion_outside_click_space_ignored(tiny_bundle):
    """y & z: a conversion label on a non-clicked row does not count as a CTCVR positive."""
    seed_everything(0)
    model = build("esmm", tiny_bundle)
    batch = first_batch(tiny_bundle)
    out = model(batch)
    before = model.task_losses(out, batch)
    batch.labels[:, 1] = torch.where(batch.labels[:, 0] == 0, 1.0, batch.labels[:, 1])
    torch.testing.assert_close(model.task_losses(out, batch), before)


def test_esmm_task_roles(tiny_bundle):
    seed_everything(0)
    model = build("esmm", tiny_bundle, ctr_task="click", cvr_task="purchase")
    assert (model.ctr_task, model.cvr_task) == ("click", "purchase")
    assert model.towers["click"][0].in_features == model.input_dim
    with pytest.raises(ValueError, match="not one of the tasks"):
        build("esmm", tiny_bundle, cvr_task="conversion")
    with pytest.raises(ValueError, match="must differ"):
        build("esmm", tiny_bundle, ctr_task="click", cvr_task="click")
    default = create_model("esmm", tiny_bundle, embedding_dim=4)
    assert [m.out_features for m in default.towers["click"] if isinstance(m, torch.nn.Linear)] == [360, 200, 80]


# ---- AITM --------------------------------------------------------------------------------------------------------
def test_calibrator_function():
    p1 = torch.tensor([0.5, 0.2, 0.9, 0.1])
    p2 = torch.tensor([0.6, 0.1, 0.9, 0.4])
    p3 = torch.tensor([0.7, 0.0, 0.1, 0.3])
    # rows: (0.1 + 0.1), 0, 0, (0.3 + 0)
    torch.testing.assert_close(calibrator_loss([p1, p2, p3]), torch.tensor(0.5 / 4))
    assert calibrator_loss([p1, p1 * 0.5]) == 0


def test_aitm_calibrator_matches_hand_computation(tiny_bundle):
    seed_everything(0)
    model = build("aitm", tiny_bundle, calibrator_weight=0.6)
    batch = first_batch(tiny_bundle, 128)
    with torch.no_grad():  # make ŷ_2 > ŷ_1 on part of the rows so the hinge is active
        model.heads["purchase"].bias += 1.0
    out = model(batch)
    p1, p2 = torch.sigmoid(out.logits["click"]), torch.sigmoid(out.logits["purchase"])
    hand = 0.6 * torch.clamp(p2 - p1, min=0).mean()
    assert hand > 0
    torch.testing.assert_close(out.aux_losses["aitm_calibrator"], hand)

    # computed in the same forward: a second batch gets its own value, not the previous one
    other = next(iter(BatchIterator(tiny_bundle.valid, 128)))
    out2 = model(other)
    q1, q2 = torch.sigmoid(out2.logits["click"]), torch.sigmoid(out2.logits["purchase"])
    torch.testing.assert_close(out2.aux_losses["aitm_calibrator"], 0.6 * torch.clamp(q2 - q1, min=0).mean())
    assert model.extra_losses() == {}  # no state kept between forwards

    with torch.no_grad():  # ŷ_2 ≤ ŷ_1 everywhere → no calibrator loss
        model.heads["purchase"].bias -= 100.0
    out3 = model(batch)
    assert (torch.sigmoid(out3.logits["purchase"]) <= torch.sigmoid(out3.logits["click"])).all()
    assert out3.aux_losses["aitm_calibrator"] == 0


def test_aitm_calibrator_uses_final_logits_and_attention_l2(tiny_bundle):
    seed_everything(0)
    model = build("aitm", tiny_bundle, attention_l2=1e-3, dml=True)
    batch = first_batch(tiny_bundle)
    out = model(batch)
    p1, p2 = torch.sigmoid(out.logits["click"]), torch.sigmoid(out.logits["purchase"])  # after the DML plug-in
    torch.testing.assert_close(out.aux_losses["aitm_calibrator"], 0.6 * torch.relu(p2 - p1).mean())
    l2 = sum(p.pow(2).sum() for p in model.attentions.parameters())
    torch.testing.assert_close(out.aux_losses["aitm_attention_l2"], 1e-3 * l2)
    model.eval()
    assert "aitm_attention_l2" not in model(batch).aux_losses


def test_aitm_transfer_and_attention(tiny_bundle):
    seed_everything(0)
    model = build("aitm", tiny_bundle)
    batch = first_batch(tiny_bundle)
    out = model(batch)
    x = model.embed(batch).flat()
    q1, q2 = model.towers["click"](x), model.towers["purchase"](x)
    torch.testing.assert_close(out.logits["click"], model.heads["click"](q1).squeeze(-1))  # z_1 = q_1
    ait = model.attentions[0]
    p = model.transfers[0](q1)
    u = [q2, p]
    s = torch.stack([(ait.h2(v) * ait.h3(v)).sum(-1) / 8**0.5 for v in u], 1)
    w = torch.softmax(s, 1)
    z2 = w[:, :1] * ait.h1(q2) + w[:, 1:] * ait.h1(p)
    torch.testing.assert_close(out.logits["purchase"], model.heads["purchase"](z2).squeeze(-1))
    torch.testing.assert_close(ait.last_weights.sum(1), torch.ones(64))
    # z_1 = q_1: the click output does not depend on any AIT module
    model.zero_grad()
    model(batch).logits["click"].sum().backward()
    assert all(p.grad is None for p in model.attentions.parameters())


def test_aitm_three_tasks(tiny_bundle):
    seed_everything(0)
    tasks = [TaskSpec("impression_click", label="click"), TaskSpec("click2", label="click"), TaskSpec("buy")]
    model = create_model("aitm", tiny_bundle.layout, tasks, **SMALL, calibrator_weight=1.0)
    assert len(model.transfers) == 2 and len(model.attentions) == 2
    out = model(first_batch(tiny_bundle))
    probs = [torch.sigmoid(out.logits[t.name]) for t in tasks]
    hand = (torch.relu(probs[1] - probs[0]) + torch.relu(probs[2] - probs[1])).mean()
    torch.testing.assert_close(out.aux_losses["aitm_calibrator"], hand)
    shared = create_model("aitm", tiny_bundle.layout, tasks, **SMALL, share_attention=True)
    assert shared.attentions[0] is shared.attentions[1]
    with pytest.raises(ValueError, match="at least two tasks"):
        create_model("aitm", tiny_bundle.layout, tasks[:1], **SMALL)


def test_ait_attention_weights_favour_aligned_item():
    torch.manual_seed(0)
    ait = AITAttention(4, init_std=None)
    with torch.no_grad():
        for h in (ait.h1, ait.h2, ait.h3):
            h.weight.copy_(torch.eye(4))
    q = torch.tensor([[3.0, 0, 0, 0]])
    p = torch.tensor([[0.1, 0, 0, 0]])
    z = ait(p, q)
    w = torch.softmax(torch.tensor([9.0, 0.01]) / 2, 0)
    torch.testing.assert_close(z, w[0] * q + w[1] * p)


def test_virtual_gradient_sees_ple_task_gates_not_shared_gate(tiny_bundle):
    from mtlrec.plugins.virtual_gradient import task_gate_groups

    seed_everything(0)
    model = build("ple", tiny_bundle, num_levels=2)
    groups = task_gate_groups(model, 2)
    assert [list(g) for g in groups] == [list(lvl.task_gates) for lvl in model.levels]
    vg = build("ple", tiny_bundle, virtual_gradient=True)
    batch = first_batch(tiny_bundle)
    vg.task_losses(vg(batch), batch).sum().backward()
    assert all(p.grad is not None for lvl in vg.levels for p in lvl.task_gates.parameters())
