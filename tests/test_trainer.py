from __future__ import annotations

import json

import pytest
import torch

from mtlrec.experiment import seed_everything
from mtlrec.models.registry import create_model
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate
from tests.fault_child import one_thread  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _make(bundle, seed=0):
    seed_everything(seed)
    return create_model(
        "mmoe", bundle, num_experts=3, expert_hidden=[16], tower_hidden=[8], embedding_dim=4, tower_dropout=0.1
    )


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_interrupt_matches_uninterrupted(tiny_bundle, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=128, seed=3, progress=False, patience=10)
    full = _make(tiny_bundle)
    Trainer(full, cfg, tmp_path / "a").fit(tiny_bundle.train, tiny_bundle.valid)

    part = _make(tiny_bundle)
    t1 = Trainer(part, cfg, tmp_path / "b")
    res = t1.fit(tiny_bundle.train, tiny_bundle.valid, max_steps=20)  # interrupted mid-epoch 2
    assert res.interrupted and t1.state["epoch"] == 1 and t1.state["batch"] == 4
    resumed = _make(tiny_bundle, seed=99)  # different init: everything must come from the checkpoint
    t2 = Trainer(resumed, cfg, tmp_path / "b")
    assert t2.resume()
    t2.fit(tiny_bundle.train, tiny_bundle.valid)
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_early_stopping_uses_validation_and_writes_files(tiny_bundle, tmp_path):
    cfg = TrainConfig(epochs=30, batch_size=256, lr=0.05, progress=False, patience=2, monitor="click.auc")
    model = _make(tiny_bundle)
    res = Trainer(model, cfg, tmp_path).fit(tiny_bundle.train, tiny_bundle.valid)
    assert res.stopped_early and len(res.history) < 30
    # epochs are 1-based everywhere: FitResult.best_epoch, the history and log.jsonl
    best = max(res.history, key=lambda r: r["monitor_value"])
    assert res.best_epoch == best["epoch"] and [r["epoch"] for r in res.history] == list(range(1, len(res.history) + 1))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == len(res.history) and "valid" in json.loads(lines[0]) and json.loads(lines[0])["epoch"] == 1
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_lower_is_better_monitor(tiny_bundle_reg, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=256, progress=False, monitor="rating.mse")
    model = _make(tiny_bundle_reg)
    tr = Trainer(model, cfg)
    assert not tr.higher_better
    res = tr.fit(tiny_bundle_reg.train, tiny_bundle_reg.valid)
    assert res.best_value == min(h["monitor_value"] for h in res.history)


def test_masked_task_metrics_use_sample_space(tiny_bundle):
    model = _make(tiny_bundle)
    scores = evaluate(model, tiny_bundle.valid)
    assert set(scores) == {"click", "purchase"} and "auc" in scores["purchase"]


def test_precision_is_checked(monkeypatch):
    from mtlrec.errors import UserError
    from mtlrec.train import precision

    with pytest.raises(UserError, match="expected one of"):
        precision.check_precision("fp8")
    with pytest.raises(UserError, match="needs a CUDA device"):
        precision.check_precision("fp16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: ["avx2", "fma"])
    with pytest.warns(RuntimeWarning, match="emulated"):
        precision.check_precision("bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: ["avx512_bf16"])
    assert precision.check_precision("bf16") == "bf16"
