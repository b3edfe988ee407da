"""A tiny training run for the fault-injection tests (tests/test_resume_faults.py), also run as a child process.

``python tests/fault_child.py RUN_DIR [--resume]`` trains the tiny MMoE (dropout on) into ``RUN_DIR``. The
``MTLREC_FAULT`` environment variable makes the child hurt itself: ``sigint@step:K`` / ``sigkill@step:K`` signal
the process right after step K; ``sigkill@replace:K`` kills it at the K-th rename onto ``last.pt`` (after the
previous checkpoint became ``last.prev.pt``, before the new one is in place).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mtlrec.data.bundle import encode_tables  # noqa: E402
from mtlrec.errors import RunInterrupted  # noqa: E402
from mtlrec.models.registry import create_model  # noqa: E402
from mtlrec.train.trainer import TrainConfig, Trainer  # noqa: E402
from tests.conftest import make_table, tiny_schema  # noqa: E402

CONFIG = dict(epochs=3, batch_size=160, seed=5, progress=False, patience=10, checkpoint_every=2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models in tests: one thread is much faster on a busy machine (and the kernels the children use)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bundle():
    full = make_table(1600)
    tables = {"train": full.slice(0, 1000), "valid": full.slice(1000, 300), "test": full.slice(1300, 300)}
    return encode_tables("tiny", tiny_schema(), tables, {"seed": 0})


def trainer(data, run_dir, seed: int = 0, **overrides) -> Trainer:
    torch.manual_seed(seed)
    model = create_model(
        "mmoe", data, num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4, tower_dropout=0.3
    )
    return Trainer(model, TrainConfig(**{**CONFIG, **overrides}), run_dir, run_info={"model": "mmoe", "n": 1})


def _install_fault(spec: str):
    """Returns an ``on_step`` callback (or None) and patches os.replace for ``@replace`` faults."""
    kind, _, where = spec.partition("@")
    point, _, k = where.partition(":")
    sig = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[kind]
    k = int(k)
    if point == "step":
        return lambda step, loss: os.kill(os.getpid(), sig) if step == k else None
    real, count = os.replace, [0]

    def replace(src, dst):
        if Path(dst).name == "last.pt":
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), sig)
        return real(src, dst)

    os.replace = replace
    return None


def main() -> int:
    torch.set_num_threads(1)  # as tests/test_resume_faults.py: the same kernels as the in-process reference
    run_dir = Path(sys.argv[1])
    on_step = _install_fault(os.environ["MTLREC_FAULT"]) if os.environ.get("MTLREC_FAULT") else None
    data = bundle()
    tr = trainer(data, run_dir)
    if "--resume" in sys.argv:
        tr.resume()
    try:
        tr.fit(data.train, data.valid, on_step=on_step)
    except RunInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
