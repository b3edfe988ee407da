"""torch-rechub's MMoE trained with its own ``MTLTrainer`` on the standard synthetic config (peers venv only).

Same data (``synth.py``) and shape as mtlrec's throughput benchmark: 26 sparse features (embedding 16) plus 13
dense features fed raw, 8 experts [256, 128], linear softmax gates, towers [64], 2 binary tasks, batch 2048,
2 threads. Everything else is the library's default (its Adam with weight_decay 1e-5 over all parameters, its MLP
with BatchNorm, its ``TorchDataset`` + ``DataLoader``). Each timed run is one ``train_one_epoch`` over
``steps_per_run`` batches.

    /work/peers-venv/bin/python benchmarks/peers/rechub_mmoe.py --rows 500000
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _harness import parse_args, report, time_epochs  # noqa: E402
from synth import NUM_NUM, make_arrays, vocab_sizes  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch_rechub.basic.features import DenseFeature, SparseFeature  # noqa: E402
from torch_rechub.models.multi_task import MMOE  # noqa: E402
from torch_rechub.trainers import MTLTrainer  # noqa: E402
from torch_rechub.utils.data import TorchDataset  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    a = make_arrays(args.rows, args.seed)
    sparse = [SparseFeature(f"c{i}", v + 1, embed_dim=16) for i, v in enumerate(vocab_sizes())]
    dense = [DenseFeature(f"n{i}") for i in range(NUM_NUM)]
    x = {f"c{i}": a["cat"][:, i] for i in range(len(sparse))}
    x.update({f"n{i}": a["num"][:, i] for i in range(NUM_NUM)})
    y = a["labels"]
    model = MMOE(
        features=sparse + dense,
        task_types=["classification", "classification"],
        n_expert=8,
        expert_params={"dims": [256, 128]},
        tower_params_list=[{"dims": [64]}, {"dims": [64]}],
    )
    trainer = MTLTrainer(
        model,
        task_types=["classification", "classification"],
        optimizer_params={"lr": 1e-3, "weight_decay": 1e-5},
        n_epoch=1,
        device="cpu",
        model_path="/tmp",
    )

    def train_on(idx):
        ds = TorchDataset({k: v[idx] for k, v in x.items()}, y[idx])
        trainer.train_one_epoch(DataLoader(ds, batch_size=args.batch_size, shuffle=True))

    runs = time_epochs(train_on, args)
    report("torch_rechub", md.version("torch-rechub"), runs, torch=torch.__version__)


if __name__ == "__main__":
    main()
