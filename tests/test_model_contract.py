"""The contract every registered model keeps: registering a model (``@register_model``) is what gets it tested.

For each name of ``list_models()`` on a tiny generated data set (two binary tasks, one masked, and one regression
task): output shapes per task; every trainable parameter gets a non-zero gradient (a model whose sampling or gating
parts legitimately get none on a step lists them in ``MultiTaskModel.no_grad_parameters``); the same seed gives
identical outputs; a ``state_dict`` loaded into a fresh instance gives identical outputs; an unknown constructor
parameter is a ``UserError`` naming the model, the parameter and the nearest valid name; DML attaches where the
model hosts tower plug-ins and the model still trains. Model-specific checks (formulas, stop-gradients, VG
coefficients, DML exactness, ...) live in the per-family test files.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch

from mtlrec.data.batches import Batch, BatchIterator
from mtlrec.data.bundle import encode_tables
from mtlrec.errors import UserError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.capabilities import TowerPluginHost
from mtlrec.models.registry import create_model, list_models, model_params
from mtlrec.seeding import seed_everything
from tests.conftest import make_table, tiny_schema

MODELS = list_models()
SMALL = {"embedding_dim": 4}


@pytest.fixture(scope="module")
def data():
    full = make_table(600, seed=3)
    tables = {"train": full.slice(0, 400), "valid": full.slice(400, 100), "test": full.slice(500, 100)}
    return encode_tables("contract", tiny_schema(), tables, {"seed": 0})


@pytest.fixture(scope="module")
def batch(data) -> Batch:
    return next(iter(BatchIterator(data.train, 128)))


def build(name: str, data, seed: int = 0, **params) -> MultiTaskModel:
    seed_everything(seed)
    return create_model(name, data, **{**SMALL, **params})


def total_loss(model: MultiTaskModel, batch: Batch) -> torch.Tensor:
    out = model(batch)
    return model.task_losses(out, batch).sum() + sum(out.aux_losses.values(), torch.zeros(()))


def parameters_without_gradient(model: MultiTaskModel) -> list[str]:
    """Trainable parameters whose gradient is missing or all zero, less the model's declared exemptions."""
    missing = []
    for n, p in model.named_parameters():
        if not p.requires_grad or any(fnmatch.fnmatch(n, pat) for pat in model.no_grad_parameters):
            continue
        g = p.grad
        if g is None or not (g.to_dense() if g.is_sparse else g).abs().sum() > 0:
            missing.append(n)
    return missing


def assert_shapes_and_gradients(model: MultiTaskModel, batch: Batch) -> None:
    """Shared by the per-family variant tests: one logit ``(B,)`` per task and a gradient for every parameter."""
    model.train()
    out = model(batch)
    assert list(out.logits) == model.task_names
    for t, v in out.logits.items():
        assert v.shape == (len(batch),), t
        assert torch.isfinite(v).all(), t
    model.zero_grad()
    (model.task_losses(out, batch).sum() + sum(out.aux_losses.values(), torch.zeros(()))).backward()
    assert parameters_without_gradient(model) == []


def eval_logits(model: MultiTaskModel, batch: Batch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def steps_reduce_loss(model: MultiTaskModel, batch: Batch, steps: int = 8, lr: float = 1e-3) -> tuple[float, float]:
    """Eval-mode loss on one batch before the first and the lowest after each of ``steps`` optimiser steps on it
    (Adam for dense parameters, SparseAdam for those with sparse gradients, as the trainer does). The lowest, not
    the last: a model whose first steps overshoot on 128 rows (DEPHN's wide linear head) still shows it learns."""

    def loss_eval() -> float:
        model.eval()
        with torch.no_grad():
            return float(model.task_losses(model(batch), batch).sum())

    before = loss_eval()
    model.train()
    model.zero_grad()
    total_loss(model, batch).backward()
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    dense = [p for p in params if not p.grad.is_sparse]
    sparse = [p for p in params if p.grad.is_sparse]
    opts = [torch.optim.Adam(dense, lr=lr)] + ([torch.optim.SparseAdam(sparse, lr=lr)] if sparse else [])
    after = []
    for step in range(steps):
        if step:
            model.train()
            for o in opts:
                o.zero_grad()
            total_loss(model, batch).backward()
        for o in opts:
            o.step()
        after.append(loss_eval())
    return before, min(after)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_every_parameter_gets_a_gradient(name, data, batch):
    assert_shapes_and_gradients(build(name, data), batch)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_outputs(name, data, batch):
    runs = []
    for _ in range(2):
        model = build(name, data, seed=11)
        torch.manual_seed(5)  # the training-mode noise (dropout, gate samples) is seeded too
        model.train()
        train_out = model(batch).logits
        runs.append((train_out, eval_logits(model, batch)))
    for t in runs[0][0]:
        assert torch.equal(runs[0][0][t], runs[1][0][t]), t
        assert torch.equal(runs[0][1][t], runs[1][1][t]), t


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name, data, batch):
    a, b = build(name, data, seed=0), build(name, data, seed=1)
    steps_reduce_loss(a, batch, steps=1)  # moved off the initialisation (buffers too)
    b.load_state_dict(a.state_dict())
    want, got = eval_logits(a, batch), eval_logits(b, batch)
    for t in want:
        assert torch.equal(want[t], got[t]), t


@pytest.mark.parametrize("name", MODELS)
def test_unknown_parameter_is_a_user_error(name, data):
    with pytest.raises(UserError, match=rf"model '{name}': unknown parameter 'not_a_param'"):
        create_model(name, data, not_a_param=1)
    with pytest.raises(UserError, match=r"did you mean 'embedding_dim'\?"):
        create_model(name, data, embeding_dim=4)
    assert {"embedding_dim", "dml", "virtual_gradient"} <= model_params(name)


def learns(name: str, data, batch: Batch, **params) -> bool:
    """A few steps on one batch lower its loss at lr 1e-3, or else at 1e-4 (DEPHN + DML: CTFM over a 1,568-wide
    tower input overshoots at 1e-3 on 128 rows)."""
    for lr in (1e-3, 1e-4):
        before, after = steps_reduce_loss(build(name, data, **params), batch, lr=lr)
        if after < before:
            return True
    return False


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_dml_attaches(name, data, batch):
    assert learns(name, data, batch)
    if not isinstance(build(name, data), TowerPluginHost):
        return
    dml = build(name, data, dml="dml")
    assert [type(p).__name__ for p in dml.plugins] == ["CTFM", "GKD"]
    assert dml.plugin_specs == {"dml": {"variant": "dml"}, **build(name, data).plugin_specs}
    assert_shapes_and_gradients(dml, batch)
    assert learns(name, data, batch, dml="dml")


def test_unknown_model_is_a_user_error(data):
    with pytest.raises(UserError, match=r"unknown model 'mmeo' \(did you mean 'mmoe'\?\)"):
        create_model("mmeo", data)


def test_every_model_documents_its_paper():
    from mtlrec.models.registry import model_info

    for name in MODELS:
        info = model_info(name)
        assert info["summary"], name
        assert info["paper"], name
