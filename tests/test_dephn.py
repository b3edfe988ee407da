from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlrec.cli import app
from mtlrec.data.batches import BatchIterator
from mtlrec.layers.gates import ValueGate
from mtlrec.layers.selection import SoftSelectionGating
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate
from tests.test_model_contract import assert_shapes_and_gradients

SMALL = {"embedding_dim": 4, "dnn_hidden": [16, 8], "cross_layers": 2, "fint_layers": 2}
MOE = {**SMALL, "num_dnn_experts": 2}
CASES = [
    ("phn", SMALL),
    ("phn", {**SMALL, "shared": True, "residual": "skip"}),
    ("mt_phn", MOE),
    ("mt_phn", {**MOE, "setting": "D_pri,C&F_pub"}),
    ("mt_phn", {**MOE, "setting": "D_pub,C&F_pub"}),
    ("dephn", MOE),
    ("dephn", {**MOE, "gate": "mg", "mappings": ["raw", "sin", "cos", "square"]}),
    ("dephn", {**MOE, "use_vg": False, "use_mapping": False, "use_ssg": False, "tower_hidden": [8]}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _batch(bundle, n=64):
    return next(iter(BatchIterator(bundle.train, n)))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_shapes_and_gradients(name, params, tiny_bundle):
    seed_everything(0)
    assert_shapes_and_gradients(create_model(name, tiny_bundle, **params), _batch(tiny_bundle))


@pytest.mark.parametrize("name", ["phn", "mt_phn", "dephn"])
def test_learns_above_chance(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle, **(SMALL if name == "phn" else MOE))
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


def test_ssg_is_eq1():
    torch.manual_seed(0)
    ssg = SoftSelectionGating(3, 4)
    e = torch.randn(5, 3, 4)
    e_sa = ssg.project(ssg.attention(e)) + e
    outs = ssg(e)
    assert len(outs) == 3 and all(o.shape == e.shape for o in outs)
    torch.testing.assert_close(outs[0], 0.5 * e_sa + 0.5 * e)  # G = σ(0) = 0.5 at init
    with torch.no_grad():
        ssg.theta[0].fill_(-50.0)  # G -> 0: raw embeddings
        ssg.theta[1].fill_(50.0)  # G -> 1: attention output
    outs = ssg(e)
    torch.testing.assert_close(outs[0], e)
    torch.testing.assert_close(outs[1], e_sa)
    clamp = SoftSelectionGating(3, 4, parametrization="clamp")
    with torch.no_grad():
        clamp.theta.fill_(1.7)
    assert clamp.gate_values().max() == 1.0
    with pytest.raises(ValueError):
        SoftSelectionGating(3, 4, parametrization="tanh")


def test_mt_phn_settings_build_different_experts(tiny_bundle):
    names = {}
    for setting in ("D_pub,C&F_pub", "D_pri,C&F_pub", "D_pub,C&F_pri"):
        m = create_model("mt_phn", tiny_bundle, setting=setting, **MOE)
        names[setting] = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in m.named_parameters()}
        assert all(isinstance(g, torch.nn.Module) and not isinstance(g, ValueGate) for g in m.gates)  # MG gates
    assert {"public.dnn", "public.cross", "public.fint"} <= names["D_pub,C&F_pub"]
    assert not any(n.startswith("private") for n in names["D_pub,C&F_pub"])
    assert {"public.cross", "public.fint", "private.0"} <= names["D_pri,C&F_pub"]
    assert "public.dnn" not in names["D_pri,C&F_pub"]
    assert "public.dnn" in names["D_pub,C&F_pri"] and "public.cross" not in names["D_pub,C&F_pri"]
    m = create_model("mt_phn", tiny_bundle, setting="D_pub,C&F_pri", **MOE)
    assert set(m.private[0]) == {"cross", "fint"}
    m = create_model("mt_phn", tiny_bundle, setting="D_pri,C&F_pub", **MOE)
    assert set(m.private[1]) == {"dnn"} and m.expert_names == ["cross", "fint"]
    with pytest.raises(ValueError, match="setting"):
        create_model("mt_phn", tiny_bundle, setting="D_pri,C&F_pri", **MOE)


def test_dephn_ablation_switches(tiny_bundle):
    full = create_model("dephn", tiny_bundle, **MOE)
    assert isinstance(full.ssg, SoftSelectionGating) and full.mapping_names == ["raw", "sin", "cos"]
    assert all(isinstance(g, ValueGate) and g.num_outputs == 2 * 3 for g in full.gates)
    assert all(len(g.weight_hooks) == 1 for g in full.gates)  # the virtual gradient
    no_ssg = create_model("dephn", tiny_bundle, use_ssg=False, **MOE)
    assert not any("ssg" in n for n, _ in no_ssg.named_parameters())
    no_map = create_model("dephn", tiny_bundle, use_mapping=False, **MOE)
    assert no_map.mapping_names == ["raw"] and no_map.gates[0].num_outputs == 2
    assert no_map.tower_input_dims[0] < full.tower_input_dims[0]
    no_vg = create_model("dephn", tiny_bundle, use_vg=False, **MOE)
    assert all(not g.weight_hooks for g in no_vg.gates) and not hasattr(no_vg, "virtual_gradient_plugin")
    mg = create_model("dephn", tiny_bundle, gate="mg", **MOE)
    assert not any(isinstance(g, ValueGate) for g in mg.gates)
    shared = {id(p) for p in full.shared_parameters()}
    assert shared == {id(p) for m in (full.ssg, full.public) for p in m.parameters()}
    assert not shared & {id(p) for m in (full.private, full.gates) for p in m.parameters()}
    v1 = create_model("dephn", tiny_bundle, extra_private_dcn_v1=True, **MOE)
    assert "cross_v1" in v1.private[0]


@pytest.mark.parametrize("tower_hidden", [[], [8]])  # the linear head, and an MLP tower with the gates folded in
def test_dephn_vg_scales_tvg_gradient_and_keeps_forward(tiny_bundle, tower_hidden):
    batch = _batch(tiny_bundle, 256)
    runs = {}
    for use_vg in (False, True):
        seed_everything(0)
        m = create_model("dephn", tiny_bundle, use_vg=use_vg, tower_hidden=tower_hidden, **MOE)
        assert m._folds_gates() == bool(tower_hidden)
        with torch.no_grad():  # distinct gate values per task so |ΔG| varies
            for g in m.gates:
                g.theta.copy_(torch.randn(g.num_outputs))
        out = m(batch)
        m.task_losses(out, batch).sum().backward()
        runs[use_vg] = (m, out)
    (m0, o0), (m1, o1) = runs[False], runs[True]
    for t in o0.logits:
        assert torch.equal(o0.logits[t], o1.logits[t])
    lab = batch.labels.numpy()
    x = abs(np.corrcoef(lab[:, 0], lab[:, 1])[0, 1])
    g = [torch.sigmoid(gt.theta).detach().numpy() for gt in m1.gates]
    u = 2 * (x + np.minimum(1, np.abs(g[0] - g[1]))) / 2 - 1
    gamma = 2 * np.sqrt(np.abs(u))  # Pearson + additive sqrt (DEPHN's final choice)
    for t in range(2):
        np.testing.assert_allclose(m1.gates[t].theta.grad.numpy(), m0.gates[t].theta.grad.numpy() * gamma, rtol=1e-4)
    for (n, p0), p1 in zip(m0.named_parameters(), m1.parameters(), strict=True):
        if n.startswith(("public", "private", "towers", "heads", "ssg")):  # VG touches only the gate gradients
            assert torch.equal(p0.grad, p1.grad), n


def test_logit_parts_add_up(tiny_bundle):
    seed_everything(0)
    m = create_model("dephn", tiny_bundle, **MOE).eval()
    batch = _batch(tiny_bundle)
    out = m(batch)
    for t, (pub, pri) in m.logit_parts(batch).items():
        torch.testing.assert_close(pub + pri + m.heads[t].bias, out.logits[t])
    mlp_tower = create_model("dephn", tiny_bundle, tower_hidden=[8], **MOE)
    with pytest.raises(ValueError):
        mlp_tower.logit_parts(batch)


def test_phn_independent_tasks_share_nothing(tiny_bundle):
    seed_everything(0)
    m = create_model("phn", tiny_bundle, **SMALL)
    batch = _batch(tiny_bundle)
    m(batch).logits["click"].sum().backward()
    assert all(p.grad is None for p in m.blocks[1].parameters())
    grad = m.embedding.table.weight.grad.to_dense()
    assert grad[:, :4].abs().sum() > 0 and grad[:, 4:].abs().sum() == 0


def test_explain_model_writes_outputs(tiny_bundle, tmp_path):
    from mtlrec.explain.report import explain_model

    seed_everything(0)
    m = create_model("dephn", tiny_bundle, **MOE)
    Trainer(m, TrainConfig(epochs=1, batch_size=256, progress=False)).fit(tiny_bundle.train, tiny_bundle.valid)
    rep = explain_model(m, tiny_bundle.test, tmp_path)
    assert set(rep["ssg"]) == {"cross", "fint", "dnn"}
    assert len(rep["ssg"]["dnn"]["values"]) == m.num_fields
    assert set(rep["logit_share"]) == {"click", "purchase"}
    assert 0 < rep["logit_share"]["click"]["public_share"] < 1
    assert np.asarray(rep["gates"]["click"]["values"]).shape == (2, 3)
    for f in ("ssg_gates.png", "logit_share.png", "gates.png", "explain.json"):
        assert (tmp_path / f).stat().st_size > 1000 or f.endswith(".json")
    assert json.loads((tmp_path / "explain.json").read_text())["model"] == "dephn"
    mmoe = create_model("mmoe", tiny_bundle, embedding_dim=4, num_experts=2, expert_hidden=[8])
    rep = explain_model(mmoe, tiny_bundle.test, tmp_path / "mmoe")
    assert "ssg" not in rep and len(rep["gates"]) == 2 and (tmp_path / "mmoe" / "gates.png").exists()


def test_explain_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["explain", "--vg-only", "--out", str(tmp_path / "vg"), "--resolution", "21"])
    assert res.exit_code == 0, res.output
    surf = json.loads((tmp_path / "vg" / "vg_surfaces.json").read_text())
    assert len(surf) == 8 and (tmp_path / "vg" / "vg_surfaces.png").stat().st_size > 10_000
    assert surf["add_cos"]["summary"]["at_x1_y1"] == pytest.approx(2.0)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: tiny\n"
        "data: {name: synthetic, params: {n: 1500, task_type: binary, dim: 6}}\n"
        "model_defaults: {embedding_dim: 4}\n"
        "models: [{name: dephn, params: {num_dnn_experts: 2, dnn_hidden: [8], cross_layers: 1, fint_layers: 1}}]\n"
        "train: {epochs: 1, batch_size: 256}\n"
        "seeds: [0]\n"
    )
    out = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["explain", str(out / "dephn" / "seed0"), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    files = json.loads(res.output.strip().splitlines()[-1])["files"]
    for f in ("vg_surfaces.png", "ssg_gates.png", "logit_share.png", "gates.png", "explain.json"):
        assert f in files and (tmp_path / "ex" / f).stat().st_size > 0
    res = runner.invoke(app, ["explain", "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0
