"""Issue 15's VG-study infrastructure: measure-only VG, the gate optimizer group and Γ in the epoch log."""

from __future__ import annotations

import json

import pytest
import torch

from mtlrec.data.batches import BatchIterator
from mtlrec.errors import UserError
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer

SMALL = {"embedding_dim": 4, "tower_hidden": [8], "num_experts": 3, "expert_hidden": [8]}


def _grads(bundle, vg):
    seed_everything(0)
    model = create_model("mmoe", bundle, **SMALL, **({"virtual_gradient": vg} if vg is not None else {}))
    model.train()
    batch = next(iter(BatchIterator(bundle.train, 128)))
    model.task_losses(model(batch), batch).sum().backward()
    return model, {n: p.grad.to_dense().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_measure_only_changes_no_gradient_and_records_gamma(tiny_bundle):
    _, g0 = _grads(tiny_bundle, None)
    model, g1 = _grads(tiny_bundle, {"variant": "add_sqrt", "measure_only": True})
    assert g0.keys() == g1.keys() and all(torch.equal(g0[n], g1[n]) for n in g0)
    stats = model.epoch_stats()["vg"]
    assert stats["steps"] == 1 and stats["applied"] is False
    for name in ("click", "purchase"):
        assert 0.0 <= stats["gamma_min"][name] <= stats["gamma_mean"][name] <= stats["gamma_max"][name] <= 2.0
        assert 0.0 <= stats["relevance_mean"][name] <= 1.0
    assert model.epoch_stats()["vg"]["steps"] == 0  # reset by the call
    _, g2 = _grads(tiny_bundle, {"variant": "add_sqrt"})
    assert any(not torch.equal(g0[n], g2[n]) for n in g0 if n.startswith("gates"))


def test_gate_optimizer_sgd_owns_the_gate_parameters(tiny_bundle, tmp_path):
    seed_everything(0)
    vg = {"variant": "mul_abs", "gate_optimizer": "sgd", "gate_lr": 0.5, "gate_momentum": 0.9}
    model = create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient=vg)
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=256, lr=1e-3, progress=False), tmp_path)
    sgd = [o for o in trainer.optimizers if isinstance(o, torch.optim.SGD)]
    assert len(sgd) == 1 and sgd[0].param_groups[0]["lr"] == 0.5 and sgd[0].param_groups[0]["momentum"] == 0.9
    gate_ids = {id(p) for p in model.gates.parameters()}
    assert {id(p) for p in sgd[0].param_groups[0]["params"]} == gate_ids
    others = [p for o in trainer.optimizers if o is not sgd[0] for g in o.param_groups for p in g["params"]]
    assert not gate_ids & {id(p) for p in others} and len(others) + len(gate_ids) == len(list(model.parameters()))
    trainer.fit(tiny_bundle.train, tiny_bundle.valid)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["model_stats"]["vg"]["steps"] for r in log] == [8, 8]  # 2000 rows / 256
    assert log[0]["model_stats"]["vg"]["applied"] is True
    from mtlrec.bench.report import RunFolder, curve_png, read_log

    png = curve_png(RunFolder(tmp_path, "mmoe/seed0", {}, None, read_log(tmp_path / "log.jsonl")), tmp_path / "c.png")
    assert png is not None and png.stat().st_size > 1000  # the learning curves with a Γ panel
    # Adam at the train lr is the default optimizer already: no group of its own
    plain = create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient={"gate_optimizer": "adam"})
    assert plain.optimizer_groups() == []
    assert len(create_model("mmoe", tiny_bundle, **SMALL).optimizer_groups()) == 0


def test_gate_optimizer_on_dephn_value_gates_without_vg(tiny_bundle):
    kw = {"embedding_dim": 4, "num_dnn_experts": 2, "dnn_hidden": [8], "cross_layers": 1, "fint_layers": 1}
    spec = {"measure_only": True, "gate_optimizer": "sgd", "gate_lr": 0.1}
    model = create_model("dephn", tiny_bundle, **kw, use_vg=False, virtual_gradient=spec)
    (group,) = model.optimizer_groups()
    assert {id(p) for p in group["params"]} == {id(g.theta) for g in model.gates}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"gate_optimizer": "sgdd"}, "virtual_gradient.gate_optimizer: unknown gate optimizer 'sgdd'.*'sgd'"),
        ({"gate_lr": 0.1}, "set gate_optimizer"),
        ({"gate_optimizer": "sgd", "gate_lr": -1.0}, "gate_lr: must be > 0"),
        ({"gate_optimizer": "adam", "gate_momentum": 0.5}, "sgd only"),
        ({"measure_only": "yes"}, "measure_only: expected true or false"),
    ],
)
def test_vg_study_option_errors(tiny_bundle, spec, message):
    with pytest.raises(UserError, match=message):
        create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient=spec)


def test_a_run_with_a_gate_optimizer_resumes_exactly(tiny_bundle, tmp_path):
    vg = {"variant": "add_sqrt", "gate_optimizer": "sgd", "gate_lr": 0.5, "gate_momentum": 0.9}
    cfg = TrainConfig(epochs=2, batch_size=256, lr=1e-3, progress=False)

    def trainer(out):
        seed_everything(0)
        return Trainer(create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient=vg), cfg, out)

    whole = trainer(tmp_path / "a")
    whole.fit(tiny_bundle.train, tiny_bundle.valid)
    cut = trainer(tmp_path / "b")
    cut.fit(tiny_bundle.train, tiny_bundle.valid, max_steps=5)  # stops mid-epoch, last.pt written
    again = trainer(tmp_path / "b")
    assert again.resume()
    again.fit(tiny_bundle.train, tiny_bundle.valid)
    a, b = whole.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
