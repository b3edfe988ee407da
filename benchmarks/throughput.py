"""Training and inference throughput of mtlrec models on the standard synthetic config (BENCHMARKS.md).

Config: 500,000 rows; 26 categorical fields (vocabularies 10..100,000, about 1.06M ids, Zipf-like ids), 13 numeric;
2 binary tasks; embedding 16; MMoE with 8 experts [256, 128], towers [64]; batch 2048 (inference 8192); 2 threads.
Numeric fields enter raw beside the flattened embeddings (``numeric_mode="dense"``), as in the peers' MMoE, so all
systems build the same network (input width 26·16 + 13 = 429).

Training samples/s time the full step through ``Trainer.train_step`` (forward, task losses, backward, every
optimizer step) including batch creation from the shuffled arrays; inference times ``model(batch)`` plus the
probabilities under ``no_grad`` in eval mode. Each figure is the median of several timed runs after warm-up.
bf16 (CPU autocast) is measured only where the CPU has avx512_bf16 or AMX.

Inference engines (``--engines``): ``eager`` (the model under ``inference_mode``, from ``Batch`` objects),
``torchscript`` (``mtlrec export --format torchscript``: ``torch.jit.trace`` of mtlrec.export's inference graph),
``onnxruntime`` (``mtlrec export --format onnx``, CPU provider, the same thread count) and ``compile``
(``mtlrec predict --engine compile``: ``torch.compile``, inductor, with ``freezing``); each row but eager times
encoded numpy inputs in, every task's probability out, batch 8192. Reduced precision is what ``--precision``
gives the export and predict commands (``mtlrec.export.reduced``): bf16 (eager, torchscript, compile; only where
the CPU has avx512_bf16/AMX) is the model with its weights and embedding tables cast to bf16 once, not autocast;
int8 (onnxruntime; ``--precisions`` need not name it, every run that times onnxruntime fp32 times int8 too) is
``onnxruntime.quantization.quantize_dynamic`` of the MatMul/Gemm weights. Each reduced-precision row carries
``max_abs_diff_vs_fp32`` and ``mean_abs_diff_vs_fp32``: its scores against fp32 eager on one batch of the timed
(untrained) model. ``--no-train`` times inference alone (with ``--peers``: DeepCTR-Torch's ``predict()`` only).
``--e2e-rows`` (default 1,000,000; quick 20,000) adds the end-to-end row: a raw Parquet file (26 integer id
columns, 13 floats, a row id) scored to Parquet by ``mtlrec predict``'s code (read + encode with the fitted
preprocessing + score + write) at the fastest engine and precision (``mtlrec predict --engine/--precision``), in
a child process so that its peak RSS is its own.

``--peers`` runs torch-rechub's and DeepCTR-Torch's MMoE on the same data in their own venv (see
``benchmarks/peers/README.md``), one after the other in the same run, and reports mtlrec / peer ratios; for
inference, DeepCTR-Torch's ``predict()`` at batch 8192 against mtlrec's fastest engine (the bar: >= 3x).

``--data census`` times the training rows on Census-Income instead (group 1, ``protocol: paper``, the train split
from ``--data-dir``), each model built as its seed-0 group-1 cell of the claims grids (``configs/bench/
claims_census.yaml``, DTN and the sparse baselines from ``claims_census_dtn.yaml``; ``--models`` names a label of
those grids or a registry model, its first cell), batch 1024 on 1 thread unless given: the models and sizes the
converged census runs train, with their GFLOP/s against MMoE's (training rows only; no inference, no peers).

    python benchmarks/throughput.py [--quick] [--models mmoe,shared_bottom] [--peers] [--out FILE]
    python benchmarks/throughput.py --data census --models mmoe,ple,dephn,mt_phn,dtn --interleave
    python benchmarks/throughput.py --no-train --peers --e2e-rows 0   # the inference bar alone
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from common import (  # noqa: E402
    ROOT,
    base_parser,
    bf16_supported,
    command_line,
    markdown_table,
    parse_models,
    peak_rss_mib,
    run_script,
    write_results,
)
from synth import NUM_NUM, NUM_TASKS, make_arrays, vocab_sizes  # noqa: E402

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS = {"torch_rechub": "rechub_mmoe.py", "deepctr_torch": "deepctr_mmoe.py"}
# the precisions each inference engine is timed in (mtlrec.export.reduced; int8 rides along with fp32)
ENGINE_PRECISIONS = {
    "eager": ("fp32", "bf16"),
    "torchscript": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "compile": ("fp32", "bf16"),
}

MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "mmoe": {"num_experts": 8, "expert_hidden": (256, 128)},
    "omoe": {"num_experts": 8, "expert_hidden": (256, 128)},
    "shared_bottom": {"bottom_hidden": (256, 128)},
}


def encoded_data(rows: int, seed: int = 0):
    """The synthetic arrays as mtlrec ``EncodedData`` (ids 1..v, 0 = OOV row never used)."""
    from mtlrec.data.layout import FeatureLayout
    from mtlrec.data.preprocess import EncodedData

    a = make_arrays(rows, seed)
    layout = FeatureLayout(
        categorical=tuple((f"c{i}", v + 1) for i, v in enumerate(vocab_sizes())),
        numeric=tuple(f"n{i}" for i in range(NUM_NUM)),
        task_names=tuple(f"task{j}" for j in range(NUM_TASKS)),
    )
    return EncodedData(
        cat=a["cat"],
        num=a["num"],
        multi={},
        labels=a["labels"],
        masks=np.ones_like(a["labels"]),
        layout=layout,
        task_names=list(layout.task_names),
    )


def build_model(name: str, data, numeric_mode: str):
    import torch

    from mtlrec import TaskSpec, create_model

    torch.manual_seed(0)
    tasks = [TaskSpec(t, "binary", label=t) for t in data.task_names]
    params = dict(MODEL_PARAMS.get(name, {}))
    return create_model(
        name, data.layout, tasks, embedding_dim=16, tower_hidden=(64,), numeric_mode=numeric_mode, **params
    )


CENSUS_GRIDS = ("claims_census", "claims_census_dtn")  # where --data census finds each model's cell


def census_workload(data_dir: str):
    """``(train split, build, pick)``: Census-Income group 1 (``protocol: paper``), ``build(name, data,
    numeric_mode)`` making the model of ``pick(name)``, ``name``'s seed-0 group-1 cell in :data:`CENSUS_GRIDS` (by
    label, else the first cell of that registry model)."""
    import torch

    from mtlrec import create_model
    from mtlrec.bench import plan_grid, prepare_config
    from mtlrec.errors import UserError
    from mtlrec.experiment import load_data

    cells = [
        c
        for grid in CENSUS_GRIDS
        for c in plan_grid(prepare_config(ROOT / "configs" / "bench" / f"{grid}.yaml"), seeds=[0])
        if c.dataset in (None, "group1")
    ]
    spec = cells[0].data
    bundle = load_data({"data": {**spec, "params": {**spec.get("params", {}), "data_dir": data_dir}}})

    def pick(name: str):
        cell = next((c for c in cells if c.label == name), None) or next((c for c in cells if c.model == name), None)
        if cell is None:
            known = ", ".join(dict.fromkeys(c.label for c in cells))
            raise UserError(f"--data census: no cell of {'/'.join(CENSUS_GRIDS)} is {name!r} (labels: {known})")
        return cell

    def build(name: str, data, numeric_mode: str):
        cell = pick(name)
        torch.manual_seed(0)
        return create_model(cell.model, bundle.layout, bundle.tasks, **cell.params)

    return bundle.train, build, pick


def check_model_names(names: list[str]) -> None:
    """A name that is not a registered model is a user mistake: one ``--models`` error before anything is timed."""
    from mtlrec import list_models
    from mtlrec.errors import unknown_name

    known = list_models()
    for name in names:
        if name not in known:
            raise unknown_name("model", name, known, where="--models")


def warm_up(step, batches, warmup: int) -> None:
    for _ in range(warmup):
        step(next(batches))


def timed_run(step, batches, steps: int) -> float:
    """samples/s of ``steps`` calls of ``step(batch)``."""
    gc.collect()
    t0 = time.perf_counter()
    seen = 0
    for _ in range(steps):
        b = next(batches)
        step(b)
        seen += len(b)
    return seen / (time.perf_counter() - t0)


def time_runs(step, batches, warmup: int, runs: int, steps_per_run: int, batch_size: int) -> list[float]:
    """samples/s of ``runs`` timed runs of ``steps_per_run`` calls of ``step(batch)`` after ``warmup`` calls."""
    it = iter(batches)
    warm_up(step, it, warmup)
    return [timed_run(step, it, steps_per_run) for _ in range(runs)]


def endless(iterator_factory):
    epoch = 0
    while True:
        yield from iterator_factory(epoch)
        epoch += 1


@dataclasses.dataclass
class TrainSetup:
    """One (model, precision) training row: its trainer, endless batches and matmul GFLOP per step."""

    name: str
    precision: str
    trainer: Any
    batches: Any
    gflop: float


def setup_train(name: str, data, precision: str, args, build=build_model) -> TrainSetup:
    import torch

    from mtlrec.data.batches import BatchIterator
    from mtlrec.train.trainer import TrainConfig, Trainer

    model = build(name, data, args.numeric_mode)
    cfg = TrainConfig(batch_size=args.batch_size, precision=precision, threads=args.threads, progress=False)
    trainer = Trainer(model, cfg)
    model.train()
    torch.manual_seed(0)
    it = BatchIterator(data, args.batch_size, shuffle=True, seed=0, drop_last=True)
    gflop = train_gflop(trainer, next(iter(it.epoch(0))))
    return TrainSetup(name, precision, trainer, endless(it.epoch), gflop)


def train_row(setup: TrainSetup, runs: list[float], args) -> dict[str, Any]:
    row = _row(setup.name, "train", setup.precision, args.batch_size, runs)
    row["gflop_per_sample"] = round(setup.gflop / args.batch_size, 6)
    row["achieved_gflop_s"] = round(setup.gflop / args.batch_size * row["samples_per_s"], 2)
    if args.profile:
        row["top_ops"] = top_ops(setup.trainer.train_step, setup.batches, args.profile)
        ops = "; ".join(f"{o['op']} {100 * o['share']:.1f}%" for o in row["top_ops"])
        print(f"# {setup.name} {setup.precision} top ops (self CPU): {ops}", file=sys.stderr)
    if args.op_times:
        row["op_wall_times"] = op_wall_times(setup.trainer.train_step, setup.batches, args.op_times)
        ops = "; ".join(
            f"{o['op']} [{o['shapes']}] {o['dtype']} {o['ms_per_step']:.2f} ms" for o in row["op_wall_times"]["ops"]
        )
        print(f"# {setup.name} {setup.precision} op wall times per step: {ops}", file=sys.stderr)
    return row


def bench_train(name: str, data, precision: str, args, build=build_model) -> dict[str, Any]:
    setup = setup_train(name, data, precision, args, build)
    step = setup.trainer.train_step
    return train_row(setup, time_runs(step, setup.batches, args.warmup, args.runs, args.steps_per_run, 0), args)


def bench_train_interleaved(
    names: list[str], precisions: list[str], data, args, build=build_model
) -> dict[tuple[str, str], Any]:
    """Every (model, precision) training row timed round-robin: run ``r`` of every row before run ``r + 1`` of
    any, so a machine that speeds up or slows down during the benchmark (other tenants of a VM host) moves every
    row alike and the ratios between rows (efficiency vs MMoE, bf16 vs fp32) stay fair. All trainers live at once.
    A row that cannot run maps to its exception."""
    setups: dict[tuple[str, str], Any] = {}
    for name in names:
        for prec in precisions:
            try:
                setups[(name, prec)] = setup_train(name, data, prec, args, build)
                s = setups[(name, prec)]
                warm_up(s.trainer.train_step, s.batches, args.warmup)
            except Exception as e:  # noqa: BLE001 - reported as the row's error
                setups[(name, prec)] = e
    runs: dict[tuple[str, str], list[float]] = {k: [] for k, s in setups.items() if isinstance(s, TrainSetup)}
    for r in range(args.runs):
        for key in runs:
            s = setups[key]
            runs[key].append(timed_run(s.trainer.train_step, s.batches, args.steps_per_run))
        print(f"# interleaved run {r + 1}/{args.runs} done", file=sys.stderr)
    return {k: train_row(s, runs[k], args) if isinstance(s, TrainSetup) else s for k, s in setups.items()}


def top_ops(step, batches, n: int, steps: int = 3) -> list[dict[str, Any]]:
    """The ``n`` operators with the largest self-CPU time over ``steps`` training steps (``torch.profiler``), each
    with its share of the profiled time and its calls per step: where a model's step goes, beside its figures."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(next(batches))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:n]
    return [
        {"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls_per_step": round(e.count / steps, 1)}
        for e in ranked
    ]


def op_wall_times(step, batches, n: int, steps: int = 3) -> dict[str, Any]:
    """Wall time of every operator over ``steps`` training steps, each timed with ``perf_counter`` around its own
    call (a ``TorchDispatchMode``, no profiler): the cross-check of :func:`top_ops`, whose per-operator overhead
    can inflate an operator many times (DEPHN's bf16 gate-gradient sum: 20 ms a call profiled, 0.9 ms timed so).
    ``ops``: the ``n`` slowest (aten overload, input shapes, dtype); ``by_op``: ms per step of each operator over
    all shapes; ``ms_per_step``: their sum. Shares are of that sum."""
    import time

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    totals: dict[tuple[str, str, str], list[float]] = {}

    class _Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            elapsed = time.perf_counter() - start
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            key = (
                str(func.overloadpacket.__name__),
                " ".join("x".join(map(str, t.shape)) for t in tensors[:3]),
                str(tensors[0].dtype).removeprefix("torch.") if tensors else "",
            )
            entry = totals.setdefault(key, [0.0, 0])
            entry[0] += elapsed
            entry[1] += 1
            return out

    with _Timer():
        for _ in range(steps):
            step(next(batches))
    total = sum(t for t, _ in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
    by_op: dict[str, float] = {}
    for (op, _, _), (t, _) in totals.items():
        by_op[op] = by_op.get(op, 0.0) + t
    return {
        "ms_per_step": round(total / steps * 1000, 3),
        "by_op": {op: round(t / steps * 1000, 3) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "ops": [
            {
                "op": op,
                "shapes": shapes,
                "dtype": dtype,
                "ms_per_step": round(t / steps * 1000, 3),
                "share": round(t / total, 4),
                "calls_per_step": round(c / steps, 1),
            }
            for (op, shapes, dtype), (t, c) in ranked
        ],
    }


def train_gflop(trainer, batch) -> float:
    """Matmul GFLOP of one training step (forward + backward), counted by ``torch.utils.flop_counter`` on a copy of
    the trainer's model so the timed model's optimizer state is untouched."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(trainer.model)
    with FlopCounterMode(display=False) as counter:
        out = model(batch)
        total = model.task_losses(out, batch).sum()
        for aux in out.aux_losses.values():
            total = total + aux.float()
        total.backward()
    return counter.get_total_flops() / 1e9


def add_efficiency(rows: list[dict[str, Any]], gemm: dict[str, float]) -> None:
    """Each training row's achieved GFLOP/s as a share of the GEMM rate of its precision and of MMoE's achieved
    GFLOP/s in the same run (BENCHMARKS.md's "every model at the efficiency of the simplest")."""
    train = [r for r in rows if r.get("mode") == "train" and r.get("system") == "mtlrec" and "achieved_gflop_s" in r]
    mmoe = {r["precision"]: r["achieved_gflop_s"] for r in train if r["model"] == "mmoe"}
    fp32 = {r["model"]: r["samples_per_s"] for r in train if r["precision"] == "fp32"}
    for r in train:
        r["share_of_gemm"] = round(r["achieved_gflop_s"] / gemm[r["precision"]], 3)
        if r["precision"] in mmoe:
            r["efficiency_vs_mmoe"] = round(r["achieved_gflop_s"] / mmoe[r["precision"]], 3)
        if r["precision"] != "fp32" and r["model"] in fp32:
            r["speedup_vs_fp32"] = round(r["samples_per_s"] / fp32[r["model"]], 3)


def gemm_rate(precision: str, threads: int, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an ``n³`` matrix product in ``precision`` on ``threads`` threads: the machine's bound beside
    every achieved figure (BENCHMARKS.md)."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def bench_infer(name: str, data, precision: str, args) -> dict[str, Any]:
    import copy

    import torch

    from mtlrec.data.batches import BatchIterator
    from mtlrec.layers.experts import use_inference_form

    model = use_inference_form(build_model(name, data, args.numeric_mode).eval())  # as mtlrec predict runs it
    reference = model
    if precision == "bf16":  # the weights and tables cast once (mtlrec.export.reduced), not autocast
        model = copy.deepcopy(model).to(torch.bfloat16)
    it = BatchIterator(data, args.infer_batch_size, drop_last=True)

    @torch.inference_mode()
    def step(batch):
        out = model(batch)
        for v in model.predict_proba(out).values():
            v.float().numpy()

    steps = max(2, args.steps_per_run * args.batch_size // args.infer_batch_size)
    runs = time_runs(step, endless(it.epoch), 2, args.runs, steps, args.infer_batch_size)
    row = {**_row(name, "infer", precision, args.infer_batch_size, runs), "engine": "eager"}
    if precision != "fp32":
        from mtlrec.export.exporters import max_abs_diff
        from mtlrec.export.reduced import mean_abs_diff

        batch = next(iter(it.epoch(0)))
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in reference.predict_proba(reference(batch)).items()}
            got = {k: v.float().numpy() for k, v in model.predict_proba(model(batch)).items()}
        row["max_abs_diff_vs_fp32"] = float(f"{max_abs_diff(ref, got):.3g}")
        row["mean_abs_diff_vs_fp32"] = float(f"{mean_abs_diff(ref, got):.3g}")
    return row


class _Feeds:
    """Encoded numpy inputs of consecutive batches (what a serving system hands an exported graph)."""

    def __init__(self, data, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def epoch(self, epoch: int):
        from mtlrec.export.graph import encoded_inputs

        n = len(self.data) // self.batch_size * self.batch_size
        for lo in range(0, n, self.batch_size):
            yield _Sized(encoded_inputs(self.data, slice(lo, lo + self.batch_size)), self.batch_size)


class _Sized(dict):
    def __init__(self, feeds: dict, n: int) -> None:
        super().__init__(feeds)
        self.n = n

    def __len__(self) -> int:
        return self.n


def bench_engine(name: str, data, precision: str, engine: str, args, workdir: Path) -> dict[str, Any]:
    """Inference through what ``mtlrec export`` / ``mtlrec predict`` run: ``torchscript`` (traced),
    ``onnxruntime`` (the ONNX export; int8: dynamically quantized) or ``compile`` (torch.compile, frozen)."""
    from mtlrec.export.exporters import compiled_runner, eager_runner, export_module, load_runner, max_abs_diff
    from mtlrec.export.graph import InferenceModule, output_specs
    from mtlrec.export.reduced import mean_abs_diff

    model = build_model(name, data, args.numeric_mode).eval()
    module = InferenceModule(model)
    names = [o.name for o in output_specs(model)]
    if engine == "torchscript":
        path = workdir / f"{name}.{precision}.pt"
        export_module(module, "torchscript", path, name, precision=precision)
        run = load_runner("torchscript", path, names)
    elif engine == "onnxruntime":
        path = workdir / f"{name}.{precision}.onnx"
        export_module(module, "onnx", path, name, precision=precision)
        run = load_runner("onnx", path, names, threads=args.threads)
    elif engine == "compile":
        run = compiled_runner(module, precision)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    steps = max(2, args.steps_per_run * args.batch_size // args.infer_batch_size)
    feeds = _Feeds(data, args.infer_batch_size)
    runs = time_runs(run, endless(feeds.epoch), 2, args.runs, steps, args.infer_batch_size)
    row = {**_row(name, "infer", precision, args.infer_batch_size, runs), "engine": engine}
    if precision != "fp32":
        first = next(feeds.epoch(0))
        ref, got = eager_runner(module)(first), run(first)
        row["max_abs_diff_vs_fp32"] = float(f"{max_abs_diff(ref, got):.3g}")
        row["mean_abs_diff_vs_fp32"] = float(f"{mean_abs_diff(ref, got):.3g}")
    return row


def raw_table(rows: int, seed: int):
    """The synthetic data as a raw table: ``c0..c25`` integer ids, ``n0..n12`` floats, ``id`` the row number."""
    import pyarrow as pa

    a = make_arrays(rows, seed)
    cols = {f"c{i}": a["cat"][:, i] for i in range(a["cat"].shape[1])}
    cols.update({f"n{i}": a["num"][:, i] for i in range(NUM_NUM)})
    cols["id"] = np.arange(rows, dtype=np.int64)
    return pa.table(cols)


def make_e2e_run(name: str, args, workdir: Path) -> Path:
    """A run folder (run.json with the fitted preprocessing, best.pt) for ``name`` on the raw synthetic columns:
    vocabularies and statistics fitted on ``args.rows`` training rows (seed 0), weights as initialised."""
    from dataclasses import asdict

    import torch

    from mtlrec import TaskSpec, create_model
    from mtlrec.data.preprocess import Preprocessor
    from mtlrec.schema import CategoricalFeature, NumericFeature, Schema
    from mtlrec.train.checkpoint import atomic_save

    tasks = [TaskSpec(f"task{j}", "binary") for j in range(NUM_TASKS)]
    schema = Schema(
        [CategoricalFeature(f"c{i}") for i in range(len(vocab_sizes()))]
        + [NumericFeature(f"n{i}") for i in range(NUM_NUM)],
        tasks,
    )
    pre = Preprocessor(schema).fit(raw_table(args.rows, 0))
    layout = pre.layout()
    torch.manual_seed(0)
    params = {
        "embedding_dim": 16,
        "tower_hidden": [64],
        "numeric_mode": args.numeric_mode,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in MODEL_PARAMS.get(name, {}).items()},
    }
    model = create_model(name, layout, tasks, **params)
    run = workdir / f"run_{name}"
    run.mkdir(parents=True, exist_ok=True)
    info = {
        "model": name,
        "params": params,
        "dataset": "synthetic_raw",
        "data_meta": {},
        "layout": layout.to_dict(),
        "tasks": [asdict(t) for t in tasks],
        "preprocessor": pre.state_dict(),
    }
    (run / "run.json").write_text(json.dumps(info))
    atomic_save({"model": model.state_dict()}, run / "best.pt")
    return run


def write_raw_parquet(path: Path, rows: int, chunk: int = 100_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for lo in range(0, rows, chunk):
        t = raw_table(min(chunk, rows - lo), seed=1 + lo // chunk)
        t = t.set_column(t.column_names.index("id"), "id", pa.array(t.column("id").to_numpy() + lo))
        writer = writer or pq.ParquetWriter(str(path), t.schema)
        writer.write_table(t)
    writer.close()


def bench_e2e(name: str, engine: str, args, workdir: Path, precision: str = "fp32") -> dict[str, Any]:
    """Raw Parquet -> scores Parquet through ``mtlrec.export.scoring.predict_file``, in a child process."""
    run = make_e2e_run(name, args, workdir)
    raw = workdir / "raw.parquet"
    if not raw.exists():
        write_raw_parquet(raw, args.e2e_rows)
    job = {
        "run": str(run),
        "file": str(raw),
        "out": str(workdir / f"scores_{name}.parquet"),
        "engine": engine,
        "precision": precision,
        "threads": args.threads,
        "batch_rows": args.e2e_batch_rows,
    }
    proc = subprocess.run([sys.executable, __file__, "--e2e-child", json.dumps(job)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    base = {
        "model": name,
        "system": "mtlrec",
        "mode": "e2e_parquet",
        "precision": precision,
        "engine": engine,
        "batch_size": args.e2e_batch_rows,
        "rows": args.e2e_rows,
    }
    if proc.returncode != 0 or not lines:
        return {**base, "error": f"exit {proc.returncode}: {' | '.join(proc.stderr.strip().splitlines()[-3:])}"}
    return {**base, **json.loads(lines[-1])}


def e2e_child(job: dict[str, Any]) -> None:
    import torch

    from mtlrec.export.scoring import predict_file

    torch.set_num_threads(job["threads"])
    engine = {"onnxruntime": "onnx", "compile": "compile"}.get(job["engine"], "torch")
    rep = predict_file(
        job["run"],
        job["file"],
        job["out"],
        keep=["id"],
        engine=engine,
        precision=job.get("precision", "fp32"),
        batch_rows=job["batch_rows"],
    )
    # rows/s of the whole file; the one-off ONNX export (cached in the run folder) happens before the clock starts,
    # --engine compile compiles on the first batch, inside it
    print(
        json.dumps(
            {
                "samples_per_s": round(rep["rows_per_s"], 1),
                "seconds": round(rep["seconds"], 2),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def _row(model: str, mode: str, precision: str, batch_size: int, runs: list[float]) -> dict[str, Any]:
    return {
        "model": model,
        "system": "mtlrec",
        "mode": mode,
        "precision": precision,
        "batch_size": batch_size,
        "samples_per_s": round(statistics.median(runs), 1),
        "samples_per_s_runs": [round(r, 1) for r in runs],
        "peak_rss_mib": peak_rss_mib(),
    }


def peer_python(args) -> Path | None:
    for cand in (args.peers_venv, os.environ.get("PEERS_VENV"), "/work/peers-venv", str(PEERS_DIR / ".venv")):
        if cand and (Path(cand) / "bin" / "python").exists():
            return Path(cand) / "bin" / "python"
    return None


def run_peer(peer: str, args, mode: str = "train") -> dict[str, Any]:
    """Run one peer script in the peers venv (``mode`` train, or predict for its ``predict()``); its last stdout
    line is a JSON row."""
    py = peer_python(args)
    bs = args.batch_size if mode == "train" else args.infer_batch_size
    steps = args.steps_per_run if mode == "train" else max(2, args.steps_per_run * args.batch_size // bs)
    base = {
        "model": "mmoe",
        "system": peer,
        "mode": "train" if mode == "train" else "infer",
        "precision": "fp32",
        "batch_size": bs,
    }
    if py is None:
        return {**base, "error": "peers venv not found: run bash benchmarks/peers/setup_peers.sh"}
    cmd = [
        str(py),
        str(PEERS_DIR / PEERS[peer]),
        "--rows",
        str(args.rows),
        "--batch-size",
        str(bs),
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
        "--steps-per-run",
        str(steps),
        "--warmup",
        str(args.warmup),
    ] + (["--mode", "predict"] if mode != "train" else [])
    print(f"# running peer {peer}: {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**base, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return {**base, **json.loads(lines[-1])}


def _fastest(rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """mtlrec's fastest inference row of ``model`` (any engine, any precision)."""
    cands = [
        r
        for r in rows
        if r.get("system") == "mtlrec"
        and r.get("model") == model
        and r.get("mode") == "infer"
        and r.get("samples_per_s")
    ]
    return max(cands, key=lambda r: r["samples_per_s"], default=None)


def main() -> None:
    p = base_parser("throughput", __doc__.split("\n")[0], default_models="mmoe")
    p.add_argument("--rows", type=int, default=None, help="rows of synthetic data (default 500,000; quick 100,000)")
    p.add_argument(
        "--data",
        choices=["synthetic", "census"],
        default="synthetic",
        help="synthetic: the standard config; census: Census-Income at the claims grids' sizes",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 2048 (census: 1024, as its runs)")
    p.add_argument("--infer-batch-size", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="default 2 (census: 1, as its grid's jobs)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per figure (default 5; quick 3)")
    p.add_argument("--steps-per-run", type=int, default=None, help="train steps per timed run (default 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precisions", default=None, help="fp32,bf16 (default: bf16 only where the CPU supports it)")
    p.add_argument("--numeric-mode", default="dense", choices=["dense", "embed"])
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--no-train", action="store_true", help="inference rows only (and DeepCTR-Torch predict)")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time the training rows round-robin (run r of every row before run r+1 of any; all trainers at once)",
    )
    p.add_argument("--profile", type=int, default=0, help="record the top N operators of 3 training steps per row")
    p.add_argument(
        "--op-times",
        type=int,
        default=0,
        help="record the N operators (with shapes) taking the most wall time in 3 training steps, each timed "
        "around its own call instead of by the profiler",
    )
    p.add_argument("--peers", action="store_true", help="also run torch-rechub and DeepCTR-Torch (separate venv)")
    p.add_argument("--peers-venv", default=None)
    p.add_argument("--nproc", type=int, default=1, help="also train in 1 and N data-parallel processes (ddp rows)")
    p.add_argument("--device", default="auto", help="train.device of the --nproc rows: auto, cpu, cuda")
    p.add_argument("--engines", default="eager,torchscript,onnxruntime,compile", help="inference engines to time")
    p.add_argument(
        "--e2e-rows",
        type=int,
        default=None,
        help="rows of the end-to-end Parquet row (default 1M; quick 20,000; 0: skip)",
    )
    p.add_argument("--e2e-batch-rows", type=int, default=65536, help="rows read/encoded/scored at a time in e2e")
    p.add_argument("--e2e-child", default=None, help=argparse.SUPPRESS)
    if "--e2e-child" in sys.argv:
        e2e_child(json.loads(sys.argv[sys.argv.index("--e2e-child") + 1]))
        return
    args = p.parse_args()
    args.e2e_rows = args.e2e_rows if args.e2e_rows is not None else (20_000 if args.quick else 1_000_000)
    args.rows = args.rows or (100_000 if args.quick else 500_000)
    args.runs = args.runs or (3 if args.quick else 5)
    args.steps_per_run = args.steps_per_run or (10 if args.quick else 30)
    census = args.data == "census"
    args.batch_size = args.batch_size or (1024 if census else 2048)
    args.threads = args.threads or (1 if census else 2)
    if census and (args.peers or args.nproc > 1 or args.no_train):
        p.error("--data census times training rows only: drop --peers, --nproc and --no-train")

    import torch

    torch.set_num_threads(args.threads)
    has_bf16 = bf16_supported()
    if args.precisions:
        precisions = [x.strip() for x in args.precisions.split(",")]
    else:
        precisions = ["fp32", "bf16"] if has_bf16 else ["fp32"]
    notes = []
    if not has_bf16:
        notes.append("this CPU lacks avx512_bf16 and AMX: bf16 is not offered, fp32 only")
    if args.quick:
        notes.append(f"quick run: {args.rows:,} rows, {args.runs} runs of {args.steps_per_run} steps")
    for n in notes:
        print(f"# {n}", file=sys.stderr)

    build = build_model
    if census:
        args.no_infer, args.e2e_rows = True, 0
        data, build, pick = census_workload(args.data_dir)
        for name in parse_models(args.models, ["mmoe"]):
            pick(name)  # an unknown label ends here, before any timing
    else:
        check_model_names(parse_models(args.models, ["mmoe"]))
        data = encoded_data(args.rows)
    rows: list[dict[str, Any]] = []
    gemm = {prec: gemm_rate(prec, args.threads) for prec in precisions}
    for prec, rate in gemm.items():
        rows.append({"system": "machine", "mode": "gemm 2048^3", "precision": prec, "gflop_s": round(rate, 1)})
        print(f"# {prec} GEMM 2048^3 on {args.threads} threads: {rate:.0f} GFLOP/s", file=sys.stderr)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="mtlrec_throughput_"))
    interleaved = {}
    if args.interleave and not args.no_train:
        interleaved = bench_train_interleaved(parse_models(args.models, ["mmoe"]), precisions, data, args, build)
    for name in parse_models(args.models, ["mmoe"]):
        for prec in precisions:
            try:
                if not args.no_train:
                    row = interleaved.get((name, prec)) or bench_train(name, data, prec, args, build)
                    if isinstance(row, Exception):
                        raise row
                    rows.append(row)
                if not args.no_infer and "eager" in engines:
                    rows.append(bench_infer(name, data, prec, args))
            except Exception as e:  # a model that cannot run this config is reported, not fatal
                rows.append({"model": name, "system": "mtlrec", "precision": prec, "error": repr(e)})
            if not args.no_infer:
                runs_here = [
                    (engine, p)
                    for engine in engines
                    if engine != "eager"
                    for p in ENGINE_PRECISIONS.get(engine, ("fp32",))
                    if p == prec or (p == "int8" and prec == "fp32")
                ]
                for engine, p in runs_here:
                    try:
                        rows.append(bench_engine(name, data, p, engine, args, workdir))
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        rows.append(
                            {
                                "model": name,
                                "system": "mtlrec",
                                "mode": "infer",
                                "precision": p,
                                "engine": engine,
                                "error": repr(e),
                            }
                        )
            print(markdown_table(rows[-4:], ["model", "mode", "engine", "precision", "samples_per_s"]), file=sys.stderr)
            if args.nproc > 1:
                from ddp_throughput import train_rows

                rows.extend(train_rows(name, args, prec, args.nproc))
                print(markdown_table(rows[-2:], ["model", "processes", "samples_per_s"]), file=sys.stderr)
    if not args.no_infer and args.e2e_rows:
        for name in parse_models(args.models, ["mmoe"]):
            fastest = _fastest(rows, name)
            if fastest:
                rows.append(bench_e2e(name, fastest["engine"], args, workdir, fastest["precision"]))

    add_efficiency(rows, gemm)
    if args.peers:
        del data
        gc.collect()
        ours = next(
            (r for r in rows if r.get("model") == "mmoe" and r.get("mode") == "train" and r.get("precision") == "fp32"),
            None,
        )
        # the fastest precision of MMoE (the peers run MMoE), not the fastest model
        best = max(
            (r.get("samples_per_s", 0) for r in rows if r.get("mode") == "train" and r.get("model") == "mmoe"),
            default=0,
        )
        for peer in PEERS if not args.no_train else ():
            r = run_peer(peer, args)
            if ours and r.get("samples_per_s"):
                r["ratio_mtlrec_fp32_over_peer"] = round(ours["samples_per_s"] / r["samples_per_s"], 3)
                r["ratio_mtlrec_best_over_peer"] = round(best / r["samples_per_s"], 3)
            rows.append(r)
        if not args.no_infer:
            r = run_peer("deepctr_torch", args, mode="predict")
            fastest = _fastest(rows, "mmoe")
            if fastest and r.get("samples_per_s"):
                r["fastest_mtlrec_engine"] = f"{fastest['engine']} {fastest['precision']}"
                r["ratio_mtlrec_best_over_peer"] = round(fastest["samples_per_s"] / r["samples_per_s"], 3)
                r["meets_3x_bar"] = r["ratio_mtlrec_best_over_peer"] >= 3.0
            rows.append(r)

    cols = ["system", "model", "mode", "engine", "precision", "batch_size", "samples_per_s", "peak_rss_mib"]
    cols += ["gflop_per_sample", "achieved_gflop_s", "share_of_gemm", "efficiency_vs_mmoe", "speedup_vs_fp32"]
    if args.nproc > 1:
        cols.insert(5, "processes")
    if any("max_abs_diff_vs_fp32" in r for r in rows):
        cols += ["max_abs_diff_vs_fp32", "mean_abs_diff_vs_fp32"]
    if args.peers:
        cols += ["ratio_mtlrec_fp32_over_peer", "ratio_mtlrec_best_over_peer"]
    print(("*quick run*\n\n" if args.quick else "") + markdown_table(rows, cols))
    for r in rows:
        if "error" in r:
            print(f"- {r['system']} {r['model']}: {r['error']}")
    for n in notes:
        print(f"- {n}")
    if census:  # the models as the claims grids build them (their cells' params), on the census train split
        picked = {m: pick(m) for m in parse_models(args.models, ["mmoe"])}
        shape = {"rows": len(data), "cells": {m: {"label": c.label, "params": c.params} for m, c in picked.items()}}
    else:
        shape = {
            "rows": args.rows,
            "categorical_fields": len(vocab_sizes()),
            "total_ids": sum(vocab_sizes()),
            "numeric_fields": NUM_NUM,
            "tasks": NUM_TASKS,
            "embedding_dim": 16,
            "numeric_mode": args.numeric_mode,
            "model_params": {m: MODEL_PARAMS.get(m, {}) for m in parse_models(args.models, ["mmoe"])},
            "tower_hidden": [64],
        }
    config = {
        "data": args.data,
        **shape,
        "batch_size": args.batch_size,
        "infer_batch_size": args.infer_batch_size,
        "threads": args.threads,
        "runs": args.runs,
        "steps_per_run": args.steps_per_run,
        "warmup": args.warmup,
        "engines": engines,
        "e2e_rows": args.e2e_rows,
        "e2e_batch_rows": args.e2e_batch_rows,
        "load_average": list(os.getloadavg()),
    }
    path = write_results(
        "throughput",
        command_line(),
        rows,
        args.quick,
        args.out,
        threads=args.threads,
        extra={"config": config, "notes": notes, "bf16_supported": has_bf16},
    )
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main)
