"""Bad training input: each case stops before any training with one UserError line naming the key, task or column
(or, for a non-finite loss, the likely cause), and no failure leaves a run folder inconsistent."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlrec.data.bundle import encode_tables
from mtlrec.errors import NonFiniteLoss, UserError
from mtlrec.experiment import train_config
from mtlrec.models.registry import create_model
from mtlrec.train import checkpoint as ckpt
from mtlrec.train.trainer import TrainConfig, Trainer
from tests.conftest import make_table, tiny_schema
from tests.fault_child import one_thread  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(bundle, seed=0, **kw):
    torch.manual_seed(seed)
    params = dict(num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4, tower_dropout=0.1, **kw)
    return create_model("mmoe", bundle, **params)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 256, "progress": False, **kw})


@pytest.fixture
def small(tiny_bundle):
    tiny_bundle.splits["train"] = tiny_bundle.train.take(np.arange(600))
    return tiny_bundle


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epochs", 0, r"^train\.epochs: must be >= 1, got 0$"),
        ("epochs", 2.5, r"^train\.epochs: expected an integer"),
        ("lr", 0.0, r"^train\.lr: must be > 0, got 0\.0$"),
        ("lr", -1e-3, r"^train\.lr: must be > 0"),
        ("lr", "1e-3", r"^train\.lr: expected a number, got '1e-3' \(YAML reads 1e-3 as text: write 1\.0e-3\)$"),
        ("lr", float("nan"), r"^train\.lr: must be finite"),
        ("lr", True, r"^train\.lr: expected a number"),
        ("patience", 0, r"^train\.patience: must be >= 1"),
        ("batch_size", 0, r"^train\.batch_size: must be >= 1"),
        ("eval_batch_size", -5, r"^train\.eval_batch_size: must be >= 1"),
        ("grad_clip", 0.0, r"^train\.grad_clip: must be > 0"),
        ("embedding_lr", 0, r"^train\.embedding_lr: must be > 0"),
        ("weight_decay", -0.1, r"^train\.weight_decay: must be >= 0"),
        ("checkpoint_every", -1, r"^train\.checkpoint_every: must be >= 0"),
        ("precision", "fp8", r"^train\.precision: unknown precision 'fp8'.*expected one of: bf16, fp16, fp32$"),
        (
            "weighting",
            "uncertainity",
            r"^train\.weighting: unknown weighting 'uncertainity' \(did you mean 'uncertainty'\?\)",
        ),
        ("monitor", "auc", r"^train\.monitor: expected 'task\.metric' or 'mean\.metric'"),
    ],
)
def test_train_config_is_validated(field, value, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**{field: value})
    with pytest.raises(UserError, match=match):  # the experiment builds its TrainConfig the same way
        train_config({field: value}, seed=0)


@pytest.mark.parametrize(
    "monitor, match",
    [
        ("clik.auc", r"train\.monitor 'clik\.auc': unknown task 'clik' \(did you mean 'click'\?\)"),
        ("click.aucc", r"train\.monitor 'click\.aucc': unknown metric .* 'aucc' \(did you mean 'auc'\?\)"),
        ("click.mse", r"train\.monitor 'click\.mse': unknown metric \(not reported by task 'click'\) 'mse'"),
        ("mean.rmse", r"train\.monitor 'mean\.rmse': unknown metric \(not reported by any task\) 'rmse'"),
    ],
)
def test_unknown_monitor_is_refused_at_init(monitor, match, small, tmp_path):
    with pytest.raises(UserError, match=match):
        Trainer(_model(small), _cfg(monitor=monitor), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _bundle_with(train_click=None, valid_click=None):
    full = make_table(1400)
    tables = {"train": full.slice(0, 800), "valid": full.slice(800, 300), "test": full.slice(1100, 300)}
    for split, value in (("train", train_click), ("valid", valid_click)):
        if value is not None:
            t = tables[split]
            zeros = pa.array(np.full(t.num_rows, value, dtype=np.int64))
            tables[split] = t.set_column(t.column_names.index("click"), "click", zeros)
    return encode_tables("tiny", tiny_schema(), tables, {"seed": 0})


def test_task_whose_mask_selects_no_training_rows(tmp_path):
    # from files, the data layer refuses it while encoding ...
    with pytest.raises(UserError, match=r"task 'purchase': its mask column 'click' selects no training row"):
        _bundle_with(train_click=0)  # purchase's sample space is click == 1: empty
    # ... and the trainer refuses encoded data built by hand (the Python API) the same way
    bundle = _bundle_with()
    bundle.train.masks = np.asarray(bundle.train.masks).copy()
    bundle.train.masks[:, 1] = 0
    tr = Trainer(_model(bundle), _cfg(), tmp_path)
    with pytest.raises(UserError, match=r"^task 'purchase': no training rows \(its mask column 'click' is never 1\)"):
        tr.fit(bundle.train, bundle.valid)
    assert tr.state["step"] == 0 and not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("monitor", [None, "click.auc", "mean.auc"])
def test_monitored_task_with_one_class_in_validation(monitor, tmp_path):
    bundle = _bundle_with(valid_click=0)
    tr = Trainer(_model(bundle), _cfg(monitor=monitor), tmp_path)
    with pytest.raises(UserError) as exc:
        tr.fit(bundle.train, bundle.valid)
    msg = str(exc.value)
    assert "validation split has only label 0 for task 'click'" in msg and "AUC is undefined" in msg
    assert "monitor click.logloss" in msg and tr.state["step"] == 0


def _poison(data, what: str, row: int):
    """A copy of ``data`` with one non-finite value planted in row ``row`` (the tiny data is clean)."""
    data = data.take(np.arange(len(data)))
    if what == "num":
        data.num = data.num.copy()
        data.num[row, 0] = np.inf
    else:
        data.labels = data.labels.copy()
        data.labels[row, 0] = np.nan
    return data


def _failing_step(msg: str) -> int:
    return int(re.search(r"at step (\d+)", msg).group(1))


@pytest.mark.parametrize("what, match", [("num", "numeric input column 'price'"), ("labels", "task 'click'")])
def test_non_finite_input_names_the_column_and_keeps_the_last_good_checkpoint(what, match, small, tmp_path):
    train = _poison(small.train, what, row=450)
    tr = Trainer(_model(small), _cfg(batch_size=64, checkpoint_every=1), tmp_path)
    with pytest.raises(NonFiniteLoss, match=match) as exc:
        tr.fit(train, small.valid)
    msg = str(exc.value)
    assert "\n" not in msg and "non-finite value" in msg
    step = _failing_step(msg)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())  # the bad batch never reached the weights
    if step > 1:
        assert ckpt.load(tmp_path / "last.pt")["trainer"]["step"] == step - 1
        resumed = Trainer(_model(small, seed=7), _cfg(batch_size=64, checkpoint_every=1), tmp_path)
        assert resumed.resume()
        resumed.fit(small.train, small.valid)  # after fixing the data the run continues


def test_diverging_loss_names_the_lr(small, tmp_path, monkeypatch):
    model = _model(small)
    real, calls = model.task_losses, []

    def task_losses(out, batch):
        calls.append(1)
        losses = real(out, batch)
        return losses * float("inf") if len(calls) == 3 else losses

    monkeypatch.setattr(model, "task_losses", task_losses)
    with pytest.raises(NonFiniteLoss) as exc:
        Trainer(model, _cfg(lr=0.05), tmp_path).fit(small.train, small.valid)
    msg = str(exc.value)
    assert msg.startswith("loss became inf at step 3 (epoch 1, batch 3) with lr 0.05: the training diverged")
    assert "lower train.lr or set train.grad_clip" in msg


def _info(**kw):
    return {"model": "mmoe", "params": {"num_experts": 2}, "dataset": "tiny", **kw}


def test_failed_rerun_leaves_the_finished_run_untouched(small, tmp_path):
    Trainer(_model(small), _cfg(epochs=2), tmp_path, run_info=_info()).fit(small.train, small.valid)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert json.loads(before["run.json"])["dataset"] == "tiny"
    # a rerun (not a resume) with new metadata that fails at its first step: nothing of the old run changes
    rerun = Trainer(_model(small), _cfg(epochs=2), tmp_path, run_info=_info(dataset="other"))
    with pytest.raises(NonFiniteLoss):
        rerun.fit(_poison(small.train, "labels", row=slice(None)), small.valid)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # a rerun that succeeds replaces the whole run: new metadata, new log (epochs 1..N once), no old files
    res = Trainer(_model(small), _cfg(epochs=1), tmp_path, run_info=_info(dataset="other")).fit(
        small.train, small.valid
    )
    assert json.loads((tmp_path / "run.json").read_text())["dataset"] == "other"
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]
    assert res.best_epoch == 1 and not (tmp_path / "last.prev.pt").exists()


def test_run_json_is_written_with_the_first_checkpoint_and_restored_on_resume(small, tmp_path):
    seen = []
    tr = Trainer(_model(small), _cfg(epochs=2), tmp_path, run_info=_info())
    tr.fit(small.train, small.valid, on_step=lambda step, loss: seen.append((tmp_path / "run.json").exists()))
    assert seen[0] is False and seen[-1] is True  # not before the first checkpoint (end of epoch 1)
    (tmp_path / "run.json").unlink()  # a kill between last.pt and run.json
    again = Trainer(_model(small), _cfg(epochs=2), tmp_path, run_info=_info())
    assert again.resume()
    assert json.loads((tmp_path / "run.json").read_text()) == _info()


def test_resume_with_changed_settings_is_refused_or_applied(small, tmp_path):
    Trainer(_model(small), _cfg(epochs=1), tmp_path, run_info=_info()).fit(small.train, small.valid)
    with pytest.raises(UserError, match=r"cannot resume: .*train\.lr: 0\.001 -> 0\.01"):
        Trainer(_model(small), _cfg(epochs=1, lr=0.01), tmp_path, run_info=_info()).resume()
    with pytest.raises(UserError, match=r"cannot resume: .*params differs"):
        Trainer(_model(small), _cfg(epochs=1), tmp_path, run_info=_info(params={"num_experts": 3})).resume()
    with pytest.raises(UserError, match=r"cannot resume: the checkpoint does not match the configured model"):
        Trainer(_bigger(small), _cfg(epochs=1), tmp_path).resume()
    tr = Trainer(_model(small), _cfg(epochs=2), tmp_path, run_info=_info())  # more epochs: applied
    assert tr.resume()
    res = tr.fit(small.train, small.valid)
    assert [r["epoch"] for r in res.history] == [1, 2]


def _bigger(bundle):
    torch.manual_seed(0)
    return create_model("mmoe", bundle, num_experts=3, expert_hidden=[8], tower_hidden=[8], embedding_dim=4)
