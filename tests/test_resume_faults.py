"""Fault injection: training interrupted by SIGINT / SIGTERM (in this process and in a child process) and killed by
SIGKILL (in a child, mid-epoch in the middle of a checkpoint rotation) resumes to a result
identical bit for bit to an uninterrupted run, with dropout on. The tiny run is tests/fault_child.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlrec.errors import RunInterrupted
from mtlrec.train import checkpoint as ckpt
from mtlrec.train import trainer as trainer_mod
from tests import fault_child
from tests.fault_child import one_thread  # noqa: F401  (a fixture)

CHILD = Path(__file__).with_name("fault_child.py")
ROOT = Path(__file__).resolve().parents[1]
TIMING = {"train_seconds", "train_samples_per_s"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return fault_child.bundle()


def _outcome(tr):
    history = [{k: v for k, v in r.items() if k not in TIMING} for r in tr.state["history"]]
    best = ckpt.load(tr.out_dir / "best.pt")
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}, history, best


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    tr = fault_child.trainer(data, tmp_path_factory.mktemp("ref"))
    tr.fit(data.train, data.valid)
    return _outcome(tr)


def _resume_and_finish(data, run_dir):
    tr = fault_child.trainer(data, run_dir, seed=123)  # another init: everything must come from the checkpoint
    assert tr.resume()
    tr.fit(data.train, data.valid)
    return tr


def _assert_identical(reference, tr):
    ref_params, ref_history, ref_best = reference
    params, history, best = _outcome(tr)
    assert params.keys() == ref_params.keys()
    for k in params:
        assert torch.equal(params[k], ref_params[k]), k
    assert history == ref_history  # train_loss over whole epochs, each epoch once
    assert best["epoch"] == ref_best["epoch"] and all(
        torch.equal(best["model"][k], ref_best["model"][k]) for k in params
    )
    lines = (tr.out_dir / "log.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [1, 2, 3]
    assert not list(tr.out_dir.glob("*.tmp"))


def _self_signal(sig=signal.SIGINT):
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize(
    "point",
    ["mid-epoch", "last-batch", "validation", "epoch-end", "checkpoint-write", "sigterm", "damaged-last"],
)
def test_signal_in_process_resumes_exactly(point, data, reference, tmp_path, monkeypatch):
    tr = fault_child.trainer(data, tmp_path)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job (nohup, `&`)
    on_step = on_epoch_end = None
    if point in ("mid-epoch", "damaged-last"):
        on_step = lambda step, loss: _self_signal() if step == 4 else None  # noqa: E731
    elif point == "last-batch":
        on_step = lambda step, loss: _self_signal() if step == 7 else None  # noqa: E731  (7 batches an epoch)
    elif point == "sigterm":
        on_step = lambda step, loss: _self_signal(signal.SIGTERM) if step == 10 else None  # noqa: E731
    elif point == "epoch-end":
        on_epoch_end = lambda record: _self_signal() if record["epoch"] == 1 else None  # noqa: E731
    elif point == "validation":
        real = trainer_mod.evaluate
        calls = []

        def evaluate(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                _self_signal()
            return real(*a, **k)

        monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    elif point == "checkpoint-write":
        real_save, writes = ckpt.save_rotating, []

        def save_rotating(obj, path):
            writes.append(1)
            if len(writes) == 5:
                _self_signal()  # arrives while the checkpoint is being written
            return real_save(obj, path)

        monkeypatch.setattr(ckpt, "save_rotating", save_rotating)
    with pytest.raises(RunInterrupted) as exc:
        tr.fit(data.train, data.valid, on_step=on_step, on_epoch_end=on_epoch_end)
    msg = str(exc.value)
    assert "\n" not in msg and "rerun the same command with --resume" in msg and "step " in msg
    assert ("SIGTERM" if point == "sigterm" else "SIGINT") in msg
    if point == "mid-epoch":
        assert "epoch 1/3, batch 4/7 (step 4)" in msg
    if point == "validation":
        assert "during the validation of epoch 2/3" in msg
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    if point == "damaged-last":
        raw = (tmp_path / "last.pt").read_bytes()
        (tmp_path / "last.pt").write_bytes(raw[: len(raw) // 2])  # torn: fall back to last.prev.pt
        with pytest.warns(RuntimeWarning, match="last.pt is damaged: resuming from the previous checkpoint"):
            _assert_identical(reference, _resume_and_finish(data, tmp_path))
        return
    _assert_identical(reference, _resume_and_finish(data, tmp_path))


def _spawn(run_dir: Path, fault: str, resume: bool = False) -> subprocess.Popen:
    env = {**os.environ, "MTLREC_FAULT": fault, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    args = [sys.executable, str(CHILD), str(run_dir)] + (["--resume"] if resume else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, rc: int) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == rc, err[-3000:]
    return err


def test_child_processes_interrupted_and_killed_resume_exactly(data, reference, tmp_path):
    # two children at once (their start-up, importing torch, dominates on a busy machine)
    sigint_dir, kill_dir = tmp_path / "sigint", tmp_path / "kill"
    interrupted = _spawn(sigint_dir, "sigint@step:9")
    killed = _spawn(kill_dir, "sigkill@replace:6")  # inside the 6th rotation of last.pt (step 10, epoch 2)
    err = _wait(interrupted, 130)
    assert "interrupted by SIGINT at epoch 2/3, batch 2/7 (step 9)" in err
    _wait(killed, -signal.SIGKILL)
    assert list(kill_dir.glob("*.tmp")), "the kill should have left the new checkpoint's temporary file"
    assert (
        ckpt.load(kill_dir / "last.pt")["trainer"]["step"]
        == 8
        == ckpt.load(kill_dir / "last.prev.pt")["trainer"]["step"]
    )
    assert (kill_dir / "run.json").exists()
    for run_dir in (sigint_dir, kill_dir):
        _assert_identical(reference, _resume_and_finish(data, run_dir))
