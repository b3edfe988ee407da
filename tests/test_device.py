"""Devices and precision: device resolution, checkpoints that load anywhere, fp16/bf16 rules; CUDA cases skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrec.errors import UserError
from mtlrec.train import device as D
from mtlrec.train import precision as P
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate, predict

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(bundle):
    from mtlrec.experiment import seed_everything
    from mtlrec.models.registry import create_model

    seed_everything(0)
    return create_model("mmoe", bundle, num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4)


def test_resolve_device(monkeypatch):
    assert D.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")
    assert D.resolve_device(None) == torch.device("cpu")
    with pytest.raises(UserError, match="train.device: 'cuda' asked for, but .* no CUDA device"):
        D.resolve_device("cuda")
    with pytest.raises(UserError, match="train.device: expected one of auto, cpu, cuda, cuda:N, got 'tpu'"):
        D.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="'cuda:3' but only 1 CUDA device"):
        D.resolve_device("cuda:3")
    with pytest.raises(UserError, match="integer N"):
        D.resolve_device("cuda:x")


def test_precision_rules():
    with pytest.raises(UserError, match="needs a CUDA device"):
        P.check_precision("fp16", "cpu")
    assert P.grad_scaler("fp32", "cpu") is None and P.grad_scaler("bf16", "cpu") is None
    with pytest.raises(UserError, match="needs a CUDA device"):
        P.autocast("fp16", "cpu")
    with P.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fp16_on_cpu_is_a_user_error(tiny_bundle):
    with pytest.raises(UserError, match="fp16"):
        Trainer(_model(tiny_bundle), TrainConfig(precision="fp16", device="cpu", progress=False))


def test_finite_flag_reads_back_at_a_pace():
    flag = D.FiniteFlag(every=4, lazy=True)
    ok, bad = torch.tensor(1.0), torch.tensor(float("nan"))
    assert not flag.bad(ok, 0) and not flag.bad(bad, 1) and not flag.bad(ok, 2)
    assert flag.bad(ok, 3) and flag.first_bad_step == 1  # seen at the 4th step, attributed to step 1
    eager = D.FiniteFlag()
    assert eager.bad(bad, 7) and eager.first_bad_step == 7  # CPU: checked every step
    assert not D.FiniteFlag(lazy=True).flush()


def test_cpu_training_checkpoint_reloads_and_predicts_the_same(tiny_bundle, tmp_path):
    from mtlrec.experiment import load_run, run_one

    cfg = TrainConfig(epochs=1, batch_size=256, progress=False, device="auto")
    params = {"num_experts": 2, "expert_hidden": [8], "tower_hidden": [8], "embedding_dim": 4}
    row = run_one(tiny_bundle, "mmoe", params, cfg, tmp_path / "run")
    assert row["world_size"] == 1 and row["global_batch_size"] == 256 and row["precision"] == "fp32"
    assert row["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    model, _ = load_run(tmp_path / "run")
    assert D.model_device(model) == torch.device("cpu")
    scores = evaluate(model, tiny_bundle.test, device="cpu")
    assert scores["click"]["auc"] == pytest.approx(row["test"]["click"]["auc"], abs=1e-6)


def test_move_batch_on_cpu_is_free(tiny_bundle):
    from mtlrec.data.batches import Batch

    b = Batch.from_arrays(tiny_bundle.train, slice(0, 8))
    assert D.move_batch(b, torch.device("cpu")) is b


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_in_each_precision_reloads_on_cpu(tiny_bundle, tmp_path, precision):
    from mtlrec.train import checkpoint as ckpt

    model = _model(tiny_bundle)
    cfg = TrainConfig(epochs=3, batch_size=128, lr=5e-3, progress=False, device="cuda", precision=precision)
    tr = Trainer(model, cfg, tmp_path)
    assert D.model_device(model).type == "cuda"
    res = tr.fit(tiny_bundle.train, tiny_bundle.valid)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    on_gpu = predict(model, tiny_bundle.test)
    cpu_model = _model(tiny_bundle)
    cpu_model.load_state_dict(ckpt.load(tmp_path / "last.pt")["model"])  # map_location: CPU
    on_cpu = predict(cpu_model, tiny_bundle.test, device="cpu")
    for t in on_gpu:
        np.testing.assert_allclose(on_cpu[t], on_gpu[t], atol=1e-4)


@needs_cuda
def test_cuda_sparse_embedding_and_weightings(tiny_bundle):
    for w in ("uncertainty", "gradnorm", "pcgrad", "dwa"):
        cfg = TrainConfig(epochs=1, batch_size=256, progress=False, device="cuda", weighting=w)
        Trainer(_model(tiny_bundle), cfg).fit(tiny_bundle.train, tiny_bundle.valid)
