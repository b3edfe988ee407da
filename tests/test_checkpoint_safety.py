"""Checkpoints are data: a planted pickle payload is refused (never run), damaged files are named, the previous
last checkpoint is kept and used when the newest is damaged, writes are atomic, and configs / schemas are never
evaluated as code."""

from __future__ import annotations

import builtins
import json
import os
import warnings

import pytest
import torch
import yaml

from mtlrec.errors import UserError
from mtlrec.experiment import load_config, load_run, run_one
from mtlrec.models.registry import create_model
from mtlrec.schema import Schema
from mtlrec.train import checkpoint as ckpt
from mtlrec.train.trainer import TrainConfig, Trainer
from tests.fault_child import one_thread  # noqa: F401  (a fixture)


class Payload:
    """Unpickling this would create the marker file (what an attacker's code would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(bundle):
    torch.manual_seed(0)
    return create_model("mmoe", bundle, num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 256, "progress": False, **kw})


@pytest.fixture
def run_dir(tiny_bundle, tmp_path):
    out = tmp_path / "run"
    run_one(tiny_bundle, "mmoe", {"num_experts": 2, "expert_hidden": [8], "tower_hidden": [8]}, _cfg(), out)
    return out


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_pickled_payload_is_refused_and_never_runs(name, run_dir, tiny_bundle, tmp_path):
    marker = tmp_path / "pwned"
    good = torch.load(run_dir / name, weights_only=True)
    torch.save({**good, "extra": Payload(marker)}, run_dir / name)
    (run_dir / "last.prev.pt").unlink(missing_ok=True)  # nothing to fall back to
    with pytest.raises(UserError) as exc:
        ckpt.load(run_dir / name)
    msg = str(exc.value)
    assert str(run_dir / name) in msg and "refused" in msg and "\n" not in msg
    with pytest.raises(UserError, match="refused"):
        if name == "best.pt":
            load_run(run_dir, "best")  # what predict / evaluate / explain use
        else:
            Trainer(_model(tiny_bundle), _cfg(), run_dir).resume()
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not-a-checkpoint"])
def test_damaged_checkpoint_is_named(damage, run_dir):
    path = run_dir / "best.pt"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(UserError) as exc:
        load_run(run_dir, "best")
    assert str(path) in str(exc.value) and "damaged" in str(exc.value) and "\n" not in str(exc.value)


def test_genuine_checkpoints_hold_only_tensors_and_plain_values(tiny_bundle, tmp_path):
    # every weighting's state goes into last.pt; all of it must load with weights_only=True
    train = tiny_bundle.train.take(slice(0, 512))
    for weighting in ("fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"):
        out = tmp_path / weighting
        Trainer(_model(tiny_bundle), _cfg(epochs=2, weighting=weighting), out).fit(train, tiny_bundle.valid)
        for name in ("last.pt", "best.pt", "last.prev.pt"):
            torch.load(out / name, weights_only=True)


def test_rotation_keeps_previous_and_resume_falls_back(tiny_bundle, tmp_path):
    tr = Trainer(_model(tiny_bundle), _cfg(epochs=2), tmp_path)
    tr.fit(tiny_bundle.train, tiny_bundle.valid)
    last, prev = ckpt.load(tmp_path / "last.pt"), ckpt.load(tmp_path / "last.prev.pt")
    assert last["trainer"]["epoch"] == 2 and prev["trainer"]["epoch"] == 1
    (tmp_path / "last.pt").write_bytes(b"\0" * 100)
    tr2 = Trainer(_model(tiny_bundle), _cfg(epochs=2), tmp_path)
    with pytest.warns(RuntimeWarning, match=r"last.pt is damaged: resuming from the previous checkpoint last.prev.pt"):
        assert tr2.resume()
    assert tr2.state["epoch"] == 1
    (tmp_path / "last.prev.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"last.pt: checkpoint is damaged"):
        Trainer(_model(tiny_bundle), _cfg(epochs=2), tmp_path).resume()
    # last.pt missing (a kill between the two renames where hard links are unavailable): last.prev.pt is used
    other = tmp_path / "other"
    Trainer(_model(tiny_bundle), _cfg(epochs=2), other).fit(tiny_bundle.train, tiny_bundle.valid)
    (other / "last.pt").unlink()
    with pytest.warns(RuntimeWarning, match="last.pt is missing"):
        assert Trainer(_model(tiny_bundle), _cfg(epochs=2), other).resume()


@pytest.mark.parametrize("point", ["write", "rotate", "place", "no-hard-links"])
def test_kill_at_every_point_of_a_rotation_leaves_a_good_checkpoint(point, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_rotating({"model": {"w": torch.zeros(2)}, "v": 1}, path)
    ckpt.save_rotating({"model": {"w": torch.ones(2)}, "v": 2}, path)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if (point == "rotate" and len(calls) == 1) or (point in ("place", "no-hard-links") and len(calls) == 2):
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    def dying_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    if point == "write":
        monkeypatch.setattr(torch, "save", dying_save)
    if point == "no-hard-links":
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_rotating({"model": {"w": torch.full((2,), 3.0)}, "v": 3}, path)
    monkeypatch.undo()
    if point == "no-hard-links":  # last.pt was renamed to last.prev.pt and the new one never arrived
        with pytest.warns(RuntimeWarning, match="last.pt is missing"):
            state, used = ckpt.load_with_fallback(path, warn=lambda m: warnings.warn(m, RuntimeWarning, stacklevel=2))
        assert used == ckpt.prev_path(path) and state["v"] == 2
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, used = ckpt.load_with_fallback(path)
    assert used == path and state["v"] == 2
    assert ckpt.load(ckpt.prev_path(path))["v"] == (2 if point == "place" else 1)


def test_stale_tmp_files_are_removed_at_start(tiny_bundle, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / "last.pt.abc123.tmp", tmp_path / "best.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    Trainer(_model(tiny_bundle), _cfg(), tmp_path).fit(tiny_bundle.train, tiny_bundle.valid)
    assert not any(p.exists() for p in stale) and not list(tmp_path.glob("*.tmp"))


def test_atomic_write_text(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    ckpt.atomic_write_text(target, '{"a": 1}')
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ckpt.atomic_write_text(target, '{"a": 2}')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))


def test_python_tags_in_a_config_or_schema_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"!!python/object/apply:builtins.open [{str(marker)!r}, w]"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"name: x\ndata: {evil}\n")
    with pytest.raises((UserError, yaml.YAMLError)):
        load_config(cfg)
    schema = tmp_path / "schema.yaml"
    schema.write_text(f"features: {evil}\ntasks: []\n")
    with pytest.raises((UserError, yaml.YAMLError)):
        Schema.load(schema)
    assert not marker.exists()
