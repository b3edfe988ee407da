"""Data-parallel training on 2 CPU processes (gloo, localhost) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlrec.errors import UserError
from mtlrec.train import distributed

WEIGHTINGS = ["fixed", "uncertainty", "gradnorm", "pcgrad"]
STEPS = 4


def _bundle():
    from mtlrec.data.bundle import encode_tables

    from .conftest import make_table, tiny_schema

    full = make_table(3000)
    tables = {"train": full.slice(0, 2000), "valid": full.slice(2000, 500), "test": full.slice(2500, 500)}
    return encode_tables("tiny", tiny_schema(), tables, {"seed": 0})


def _model(bundle, **kw):
    from mtlrec.experiment import seed_everything
    from mtlrec.models.registry import create_model

    seed_everything(0)
    return create_model(
        "mmoe", bundle.layout, bundle.tasks, num_experts=3, expert_hidden=[16], tower_hidden=[8], embedding_dim=4, **kw
    )


def _run(out_dir=None) -> dict:
    """Per-step losses under each weighting, a short fit's test AUC, and an interrupted + resumed fit; the same code
    in one process and in every rank of a group."""
    from mtlrec.data.batches import BatchIterator
    from mtlrec.train.trainer import TrainConfig, Trainer, evaluate

    torch.set_num_threads(1)
    bundle = _bundle()
    res: dict = {"losses": {}, "params": {}}
    for w in WEIGHTINGS:
        cfg = TrainConfig(batch_size=256, lr=1e-2, weighting=w, progress=False, device="cpu")
        tr = Trainer(_model(bundle), cfg)
        it = distributed.ShardedBatches(BatchIterator(bundle.train, 256, shuffle=True, seed=0), distributed.current())
        losses = []
        for k, b in enumerate(it.epoch(0)):
            if k == STEPS:
                break
            losses.append(tr.train_step(b, it.last_global_size)[1].tolist())
        res["losses"][w] = losses
        res["params"][w] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=200, lr=1e-2, progress=False, patience=5, device="cpu")
    tr = Trainer(_model(bundle, embedding_l2=1e-4), cfg, out_dir / "full" if out_dir else None)
    tr.fit(bundle.train, bundle.valid)
    tr.load_best()
    res["test_auc"] = evaluate(tr.model, bundle.test)["click"]["auc"]
    res["history"] = [h["monitor_value"] for h in tr.state["history"]]
    if out_dir:  # interrupted mid-epoch 2, then resumed by a fresh trainer
        part = Trainer(_model(bundle, embedding_l2=1e-4), cfg, out_dir / "part")
        part.fit(bundle.train, bundle.valid, max_steps=13)
        again = Trainer(_model(bundle, embedding_l2=1e-4), cfg, out_dir / "part")
        assert again.resume()
        again.fit(bundle.train, bundle.valid)
        res["resume_diff"] = max(
            float((a - b).abs().max())
            for a, b in zip(tr.model.state_dict().values(), again.model.state_dict().values(), strict=True)
        )
        tr2 = Trainer(_model(bundle, embedding_l2=1e-4), cfg, out_dir / "full")
        tr2.resume()
        res["last_matches"] = all(
            torch.equal(a, b)
            for a, b in zip(tr2.model.state_dict().values(), tr.model.state_dict().values(), strict=True)
        )
    if distributed.current() is not None:  # both sparse synchronisations give the same averaged rows
        g = torch.Generator().manual_seed(distributed.rank())
        idx = torch.randint(0, 500, (300,), generator=g)
        grads = []
        for mode in ("gather", "dense"):
            p = torch.nn.Parameter(torch.zeros(500, 3))
            p.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), torch.ones(300, 3), (500, 3))
            distributed.sync_gradients([p], sparse_mode=mode)
            grads.append(p.grad.coalesce())
        res["sparse_modes_agree"] = torch.equal(grads[0].indices(), grads[1].indices()) and torch.allclose(
            grads[0].values(), grads[1].values()
        )
    res["rank"] = distributed.rank()
    res["world"] = distributed.world_size()
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = _run()
    out = tmp_path_factory.mktemp("ddp")
    two = distributed.launch(2, _run, {"out_dir": out})
    return one, two, out


def test_two_processes_equal_one_process_per_step(runs):
    one, two, _ = runs
    assert sorted(two) == [0, 1] and two[0]["world"] == 2 and two[1]["rank"] == 1
    for w in WEIGHTINGS:
        for r in (0, 1):
            np.testing.assert_allclose(two[r]["losses"][w], one["losses"][w], rtol=1e-5, atol=1e-6, err_msg=w)
            for k, v in one["params"][w].items():
                torch.testing.assert_close(two[r]["params"][w][k], v, rtol=1e-4, atol=1e-5, msg=f"{w}: {k}")


def test_two_processes_same_validation_and_test_auc(runs):
    one, two, _ = runs
    assert two[0]["history"] == two[1]["history"]  # the whole split's metric, on both ranks
    np.testing.assert_allclose(two[0]["history"], one["history"], atol=1e-3)
    assert abs(two[0]["test_auc"] - one["test_auc"]) < 1e-3


def test_rank_zero_writes_and_resume(runs):
    _, two, out = runs
    lines = (out / "full" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["epoch"] == 1  # one writer: not one line per rank (1-based)
    assert (out / "full" / "best.pt").exists() and not list(out.rglob("*.tmp"))
    for r in (0, 1):
        assert two[r]["resume_diff"] < 1e-5 and two[r]["last_matches"]
        assert two[r]["sparse_modes_agree"]


def _fail_on_rank_one() -> None:
    distributed.barrier()
    if distributed.rank() == 1:
        raise UserError("deliberate failure")
    distributed.barrier()  # rank 0 waits here until the launcher stops it


def test_a_failing_worker_stops_the_others_and_names_its_rank():
    with pytest.raises(distributed.WorkerFailed, match=r"worker rank 1 of 2 failed \(.*deliberate failure"):
        distributed.launch(2, _fail_on_rank_one)


def _group_lifetime() -> tuple[bool, bool]:
    import torch.distributed as dist

    distributed.current()
    opened = dist.is_initialized()
    distributed.shutdown()
    distributed.shutdown()  # twice: a no-op
    return opened, dist.is_initialized()


def test_the_process_group_is_destroyed_before_the_interpreter_exits():
    # left to interpreter finalisation, gloo's threads can abort a finished run (SIGABRT)
    assert distributed.launch(2, _group_lifetime) == {0: (True, False), 1: (True, False)}


def test_the_root_failure_is_named_not_a_knock_on_one():
    from types import SimpleNamespace as F

    gloo = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:19369."
    cause = F(exitcode=1, message="UserError: deliberate failure", timestamp=100)
    failures = {
        0: F(exitcode=1, message=gloo, timestamp=100),  # a lower rank whose barrier broke in the same second
        1: cause,
        2: F(exitcode=-15, message="Signal 15 (SIGTERM) received", timestamp=99),  # stopped by the launcher
    }
    assert distributed.root_failure(failures) == (1, cause)
    later = F(exitcode=1, message="ValueError: second", timestamp=101)
    assert distributed.root_failure({0: later, 3: cause}) == (3, cause)  # the earliest real failure
    assert distributed.root_failure({0: failures[0]}) == (0, failures[0])  # only knock-on ones: still named


def test_shard_bounds_cover_the_batch():
    for n in (0, 1, 7, 256):
        parts = [distributed.shard_bounds(n, 3, r) for r in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))


def test_cli_train_nproc_2_equals_one_process(tmp_path):
    from typer.testing import CliRunner

    from mtlrec.cli import app

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "data: {name: synthetic, params: {n: 2000, task_type: binary, dim: 6}}\n"
        "model_defaults: {numeric_mode: dense, tower_hidden: [8]}\n"
        "models: [{name: mmoe, params: {num_experts: 2, expert_hidden: [8]}}]\n"
        "train: {epochs: 2, batch_size: 200, device: cpu}\nseeds: [0]\n"
    )
    rows = {}
    for n in (1, 2):
        out = tmp_path / f"runs{n}"
        res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(out), "--quiet", "--nproc", str(n)])
        assert res.exit_code == 0, res.output
        rows[n] = _only_row(out)
    # the same command under torchrun itself (torch.distributed.run: what the torchrun script calls)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = tmp_path / "torchrun"
    done = subprocess.run(
        [*torchrun, "-m", "mtlrec", "train", str(cfg), "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows["torchrun"] = _only_row(out)
    assert rows[2]["world_size"] == 2 and rows[1]["world_size"] == 1 and rows[2]["global_batch_size"] == 200
    assert rows["torchrun"]["world_size"] == 2 and rows["torchrun"]["test"] == rows[2]["test"]
    for t in ("y1", "y2"):
        assert abs(rows[2]["test"][t]["auc"] - rows[1]["test"][t]["auc"]) < 1e-3


def _only_row(out: Path) -> dict:
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1  # rank 0 alone writes
    return json.loads(lines[0])
