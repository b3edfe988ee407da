"""Training samples/s of ``Trainer.train_step`` in N data-parallel processes (``throughput.py --nproc N``).

Every rank builds the same synthetic arrays, cuts its share of each global batch (``ShardedBatches``) and runs
the full distributed step (global-batch losses, gradient averaging, sparse-row sync). The figure is global samples
per second on rank 0, the median of the timed runs; each process gets ``threads // N`` threads, so the processes
share the cores one process would have had.
"""

from __future__ import annotations

from typing import Any


def _worker(name: str, opts: dict[str, Any], precision: str) -> dict[str, Any]:
    import statistics

    import throughput as T
    import torch

    from mtlrec.data.batches import BatchIterator
    from mtlrec.train import distributed
    from mtlrec.train.trainer import TrainConfig, Trainer

    world = distributed.world_size()
    threads = max(1, opts["threads"] // world)
    torch.set_num_threads(threads)
    data = T.encoded_data(opts["rows"])
    model = T.build_model(name, data, opts["numeric_mode"])
    cfg = TrainConfig(batch_size=opts["batch_size"], precision=precision, progress=False, device=opts["device"])
    trainer = Trainer(model, cfg)
    it = distributed.ShardedBatches(
        BatchIterator(data, opts["batch_size"], shuffle=True, seed=0, drop_last=True), distributed.current()
    )

    def step(batch):
        trainer.train_step(batch, it.last_global_size)

    # time_runs counts len(batch): this rank's share; scale to the global batch
    runs = [
        r * world
        for r in T.time_runs(step, T.endless(it.epoch), opts["warmup"], opts["runs"], opts["steps_per_run"], 0)
    ]
    return {
        "model": name,
        "system": "mtlrec",
        "mode": "train",
        "precision": precision,
        "batch_size": opts["batch_size"],
        "processes": world,
        "threads_per_process": threads,
        "device": str(trainer.device),
        "samples_per_s": round(statistics.median(runs), 1),
        "samples_per_s_runs": [round(r, 1) for r in runs],
    }


def train_rows(name: str, args, precision: str, nproc: int) -> list[dict[str, Any]]:
    """Rows for 1 and ``nproc`` processes (both launched the same way, so they compare like with like)."""
    from mtlrec.train.distributed import launch

    opts = {
        k: getattr(args, k)
        for k in ("rows", "threads", "numeric_mode", "batch_size", "warmup", "runs", "steps_per_run")
    }
    opts["device"] = getattr(args, "device", "auto")
    return [launch(n, _worker, {"name": name, "opts": opts, "precision": precision})[0] for n in sorted({1, nproc})]
