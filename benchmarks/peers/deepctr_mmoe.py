"""DeepCTR-Torch's MMoE trained with its own ``fit`` on the standard synthetic config (peers venv only).

Same data (``synth.py``) and shape as mtlrec's throughput benchmark: 26 sparse features (embedding 16) plus 13
dense features fed raw, 8 experts [256, 128], linear softmax gates (``gate_dnn_hidden_units=()``), towers [64],
2 binary tasks, batch 2048, 2 threads, ``compile("adam", ["binary_crossentropy"] * 2)`` without metrics. Everything
else is the library's default (e.g. its embedding L2 of 1e-5). Each timed run is one ``fit(epochs=1)`` over
``steps_per_run`` batches. With ``--mode predict``, each timed run is one ``predict()`` over ``steps_per_run`` batches
of ``--batch-size`` rows (the untrained model: speed does not depend on the weights).

    /work/peers-venv/bin/python benchmarks/peers/deepctr_mmoe.py --rows 500000
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _harness import parse_args, report, time_epochs  # noqa: E402
from deepctr_torch.inputs import DenseFeat, SparseFeat  # noqa: E402
from deepctr_torch.models import MMOE  # noqa: E402
from synth import NUM_NUM, make_arrays, vocab_sizes  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    a = make_arrays(args.rows, args.seed)
    sparse = [SparseFeat(f"c{i}", v + 1, embedding_dim=16) for i, v in enumerate(vocab_sizes())]
    dense = [DenseFeat(f"n{i}", 1) for i in range(NUM_NUM)]
    x = {f"c{i}": a["cat"][:, i] for i in range(len(sparse))}
    x.update({f"n{i}": a["num"][:, i] for i in range(NUM_NUM)})
    y = a["labels"]
    model = MMOE(
        sparse + dense,
        num_experts=8,
        expert_dnn_hidden_units=(256, 128),
        gate_dnn_hidden_units=(),
        tower_dnn_hidden_units=(64,),
        task_types=("binary", "binary"),
        task_names=("task0", "task1"),
        device="cpu",
    )
    model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])

    def train_on(idx):
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
            model.fit({k: v[idx] for k, v in x.items()}, y[idx], batch_size=args.batch_size, epochs=1, verbose=0)

    def predict_on(idx):
        model.predict({k: v[idx] for k, v in x.items()}, batch_size=args.batch_size)

    runs = time_epochs(predict_on if args.mode == "predict" else train_on, args)
    report("deepctr_torch", md.version("deepctr-torch"), runs, torch=torch.__version__)


if __name__ == "__main__":
    main()
