"""Data-parallel training over several processes (torchrun / ``mtlrec train --nproc N``) on torch.distributed.

One process per rank, every rank a full replica of the model. The design keeps N processes with global batch ``B``
numerically equal to one process with batch ``B``:

* **Data**: every rank cuts its contiguous share of each global batch (the same shuffled order as one process)
  out of the same cached columns (:class:`ShardedBatches`).
* **Losses**: each task loss is a mean over the task's sample space of the *global* batch. A rank computes its
  share ``Σ_local δ·loss / Σ_global δ`` and one all-reduce sums the shares (:func:`global_task_losses`), so every
  rank holds the global loss vector and the weighting strategy (uncertainty, GradNorm, PCGrad, DWA) runs on it
  exactly as in one process. The all-reduce's backward multiplies by ``N``, and the parameter gradients are then
  averaged over ranks (:func:`sync_gradients`): rank-local terms sum to the global gradient and replicated terms
  (the uncertainty regulariser, a parameter penalty) keep their single-process gradient.
* **Gradient-based weighting** (GradNorm, PCGrad) needs the global per-task gradients of the shared parameters:
  :func:`average_across_ranks` is applied to them where they are formed (``weighting.task_gradients``).
* **Dense gradients**: one flat all-reduce (the equivalent of DistributedDataParallel's, without its bucketing and
  overlap, which the custom weighting backward passes would defeat anyway). **Sparse embedding gradients**: the
  touched rows and their gradients are all-gathered (``all_gather`` of the COO indices and values, padded to the
  largest rank) and every rank applies the same lazy-Adam update; see :func:`sync_gradients` and
  docs/distributed.md for the measured cost against a dense all-reduce of the table.
* **Evaluation**: each rank scores a contiguous slice of the rows, scores are all-gathered in row order
  (:func:`gather_rows`) and metrics are computed on the whole split, identically on every rank.
* Only rank 0 writes files (:func:`is_writer`); data preparation runs on rank 0 first (:func:`rank_zero_first`).

Backends: gloo for CPU tensors, NCCL for CUDA tensors (``cpu:gloo,cuda:nccl``), one GPU per rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mtlrec.errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int


_CTX: DistContext | None = None
_OWNS_GROUP = False  # True when current() initialised the process group (then shutdown() destroys it)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> DistContext | None:
    """The process group of this run (initialised on first use from torchrun's environment variables), or None in
    a single process."""
    global _CTX, _OWNS_GROUP
    if _CTX is not None:
        return _CTX
    if env_world_size() <= 1:
        return None
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        _OWNS_GROUP = True
    _CTX = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _CTX


def shutdown() -> None:
    """After a successful run on every rank: meet at a barrier, then destroy the process group :func:`current`
    initialised (a no-op otherwise, and when called twice). Left to interpreter exit, gloo's threads can abort a
    finished worker (SIGABRT); destroyed while a peer still talks to it, too: hence the barrier. Not for a failing
    rank (the barrier would wait for peers still training): the launcher stops the others."""
    global _CTX, _OWNS_GROUP
    if _OWNS_GROUP and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _CTX, _OWNS_GROUP = None, False


def quiet_other_ranks() -> None:
    """Under several processes, send the standard output of every rank but 0 to /dev/null (one table printed, not
    one per rank); warnings and errors (standard error) stay visible."""
    if current() is not None and rank() != 0:
        import sys

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def world_size() -> int:
    ctx = current()
    return ctx.world_size if ctx else 1


def rank() -> int:
    ctx = current()
    return ctx.rank if ctx else 0


def is_writer() -> bool:
    """True on the one process that writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if current() is not None:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. preprocessing and caching); the others wait, then run it (reading the
    cache rank 0 wrote)."""
    if current() is None:
        yield
        return
    if rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if rank() == 0:
            dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the early-stopping decision)."""
    if current() is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    if current() is None:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# ---- data ----------------------------------------------------------------------------------------------------
def shard_bounds(n: int, world: int, r: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``r``'s contiguous share of ``n`` rows (the first ``n % world`` ranks get one more)."""
    base, extra = divmod(n, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def slice_batches(data, batch_size: int, ctx: DistContext):
    """This rank's contiguous share of ``data`` (an ``EncodedData``) in batches of at most ``batch_size`` rows,
    as many batches on every rank (sharded TorchRec tables need every rank in each forward pass): the number the
    largest share needs, each share split evenly."""
    from mtlrec.data.batches import Batch

    lo, hi = shard_bounds(len(data), ctx.world_size, ctx.rank)
    largest = shard_bounds(len(data), ctx.world_size, 0)[1]  # rank 0 holds a largest share
    count = -(-largest // batch_size)
    for j in range(count):
        a, z = shard_bounds(hi - lo, count, j)
        yield Batch.from_arrays(data, slice(lo + a, lo + z))


class ShardedBatches:
    """This rank's part of every global batch of a :class:`~mtlrec.data.batches.BatchIterator`: the global batch
    (the same rows, in the same shuffled order, as one process draws) split into ``world_size`` contiguous pieces.
    ``last_global_size`` is the size of the global batch the last yielded piece came from."""

    def __init__(self, iterator, ctx: DistContext | None) -> None:
        self.it = iterator
        self.ctx = ctx
        self.last_global_size = 0

    def num_batches(self) -> int:
        return self.it.num_batches()

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        from mtlrec.data.batches import Batch

        if self.ctx is None:
            for b in self.it.epoch(epoch, start_batch=start_batch):
                self.last_global_size = len(b)
                yield b
            return
        order = self.it.order(epoch)
        n, bs = len(self.it.data), self.it.batch_size
        for b in range(start_batch, self.it.num_batches()):
            lo, hi = b * bs, min(n, (b + 1) * bs)
            idx = np.arange(lo, hi) if order is None else np.sort(order[lo:hi])
            a, z = shard_bounds(len(idx), self.ctx.world_size, self.ctx.rank)
            self.last_global_size = len(idx)
            yield Batch.from_arrays(self.it.data, idx[a:z])


# ---- losses and gradients ------------------------------------------------------------------------------------
class _GlobalSum(torch.autograd.Function):
    """Forward: the sum over ranks. Backward: ``N ×`` the (rank-identical) incoming gradient, so that averaging
    the parameter gradients over ranks afterwards yields the single-process gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        y = x.detach().clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return g * dist.get_world_size()


def global_task_losses(losses: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The per-task losses ``(T,)`` of the global batch from this rank's ``losses`` (each a masked mean over the
    local rows, ``Σ δ·loss / max(Σ δ, 1)``) and its ``masks (b, T)``; identity in one process."""
    if current() is None:
        return losses
    local = masks.float().sum(0)
    total = local.clone()
    dist.all_reduce(total)
    share = losses * (local.clamp_min(1.0) / total.clamp_min(1.0)).to(losses.dtype)
    return _GlobalSum.apply(share)


def global_aux_loss(aux: torch.Tensor, local_rows: int, global_rows: int) -> torch.Tensor:
    """An auxiliary loss of the global batch: exact for a mean over the batch's rows and for a term that only
    depends on the (replicated) parameters; identity in one process."""
    if current() is None:
        return aux
    return _GlobalSum.apply(aux * (local_rows / max(global_rows, 1)))


def average_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (used on the per-task gradients of gradient-based weighting)."""
    if current() is None:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out.div_(dist.get_world_size())


def sync_gradients(params: list[torch.Tensor], *, sparse_mode: str = "auto") -> None:
    """Average every gradient over ranks. Dense gradients: one flat all-reduce (per dtype and device). Sparse
    gradients (the fused embedding table): ``gather`` all-gathers the touched rows and their gradients (what a rank
    sends grows with the rows its batch touches, not with the table), ``dense`` all-reduces the dense gradient
    of the whole table (cheaper only when the ranks together touch about as many rows as the table has);
    ``auto`` (default) takes ``dense`` when the touched rows of all ranks reach half the table, else ``gather``
    (benchmarks/sparse_sync.py measures both)."""
    if current() is None:
        return
    world = dist.get_world_size()
    # 0: no gradient, 1: dense, 2: sparse, agreed over ranks (a parameter without a gradient on every rank stays
    # without one, as in one process; one used on some ranks only gets a zero gradient on the others)
    kinds = torch.tensor([0 if p.grad is None else 2 if p.grad.is_sparse else 1 for p in params], dtype=torch.int32)
    dist.all_reduce(kinds, op=dist.ReduceOp.MAX)
    dense: dict[tuple, list[torch.Tensor]] = {}
    for p, kind in zip(params, kinds.tolist(), strict=True):
        if kind == 0:
            continue
        if p.grad is None:
            p.grad = (
                torch.sparse_coo_tensor(
                    torch.zeros(1, 0, dtype=torch.long, device=p.device),
                    torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device),
                    p.shape,
                    check_invariants=False,
                )
                if kind == 2
                else torch.zeros_like(p)
            )
        g = p.grad
        if g.is_sparse:
            p.grad = _sync_sparse_dense(g, world) if sparse_mode == "dense" else _sync_sparse(g, world, sparse_mode)
        else:
            dense.setdefault((g.dtype, g.device), []).append(g)
    for grads in dense.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _sync_sparse(g: torch.Tensor, world: int, mode: str = "auto") -> torch.Tensor:
    g = g.coalesce()  # fewer rows to send; the table's update coalesces again after the gather
    idx, val = g.indices()[0], g.values()
    count = torch.tensor([idx.numel()], device=idx.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    if mode == "auto" and 2 * sum(sizes) >= g.shape[0]:  # the same decision on every rank (same counts)
        return _sync_sparse_dense(g, world)
    top = max(sizes)
    pad_idx = torch.zeros(top, dtype=idx.dtype, device=idx.device)
    pad_val = torch.zeros((top, *val.shape[1:]), dtype=val.dtype, device=val.device)
    pad_idx[: idx.numel()] = idx
    pad_val[: idx.numel()] = val
    all_idx = [torch.empty_like(pad_idx) for _ in range(world)]
    all_val = [torch.empty_like(pad_val) for _ in range(world)]
    dist.all_gather(all_idx, pad_idx)
    dist.all_gather(all_val, pad_val)
    rows = torch.cat([t[:s] for t, s in zip(all_idx, sizes, strict=True)])
    vals = torch.cat([t[:s] for t, s in zip(all_val, sizes, strict=True)]).div_(world)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), vals, g.shape, check_invariants=False).coalesce()


def _sync_sparse_dense(g: torch.Tensor, world: int) -> torch.Tensor:
    g = g.coalesce()
    flat = g.to_dense().reshape(g.shape[0], -1)
    touched = torch.zeros(g.shape[0], 1, dtype=flat.dtype, device=flat.device)
    touched[g.indices()[0]] = 1.0
    # one all-reduce of [gradient | touched]: rows touched on any rank stay touched (lazy Adam updates them even
    # where their summed gradient is exactly zero, as one process does)
    both = torch.cat([flat, touched], 1)
    dist.all_reduce(both)
    rows = both[:, -1].nonzero().squeeze(1)
    vals = both.index_select(0, rows)[:, :-1].div_(world).reshape(-1, *g.shape[1:])
    return torch.sparse_coo_tensor(rows.unsqueeze(0), vals, g.shape, is_coalesced=True, check_invariants=False)


# ---- evaluation ----------------------------------------------------------------------------------------------
def gather_rows(x: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """The concatenation in rank order of every rank's ``x`` (1-D or more, any length); ``x`` in one process."""
    if current() is None:
        return x
    device = device or torch.device("cpu")
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    n = torch.tensor([t.shape[0]], device=device)
    ns = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(ns, n)
    sizes = [int(v) for v in ns]
    pad = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=device)
    pad[: t.shape[0]] = t
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).cpu().numpy()


# ---- launching -----------------------------------------------------------------------------------------------
class WorkerFailed(UserError):
    """A worker process of ``--nproc`` failed; the message names its rank and its error (one line, shown by the CLI
    as ``error: ...``; the worker's own traceback is in its stderr above)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    from torch.distributed.elastic.multiprocessing.errors import record

    result = record(fn)(**kwargs)
    shutdown()
    return result


def launch(nproc: int, fn: Callable[..., Any], kwargs: dict[str, Any] | None = None) -> dict[int, Any]:
    """Run ``fn(**kwargs)`` in ``nproc`` local worker processes through torch's elastic launcher (the function
    behind ``torchrun --standalone``), rendezvous on a free localhost port; returns each rank's return value.
    A failing worker ends the others; :class:`WorkerFailed` names its rank and error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError(f"--nproc: expected a positive number of processes, got {nproc}")
    if current() is not None:
        raise UserError("--nproc cannot be used inside a torchrun worker (torchrun already started the processes)")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"mtlrec-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    env_keep = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    if env_keep["OMP_NUM_THREADS"] is None:
        # the launcher would force 1 thread per worker; share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # the elastic agent installs its own SIGINT/SIGTERM handlers in this process and leaves them: restore ours
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return elastic_launch(config, _run_worker)(fn, kwargs or {})
    except ChildFailedError as exc:
        rank, failure = root_failure(exc.failures)
        msg = _failure_message(failure)
        raise WorkerFailed(f"worker rank {rank} of {nproc} failed ({msg}); the other workers were stopped") from None
    finally:
        for k, v in env_keep.items():
            if v is None:
                os.environ.pop(k, None)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


# how a worker's collective fails when another worker has died: a knock-on failure, not the cause
_PEER_LOST = ("closed by peer", "reset by peer", "remote worker crashing")


def root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that caused the others, from the launcher's ``{rank: ProcessFailure}``: a worker whose
    collective broke because a peer died, or that the launcher killed by a signal, is a knock-on failure; among
    the rest the earliest, then the lowest rank. (The other ranks often fail within the same second.)"""

    def knock_on(failure) -> bool:  # noqa: ANN001
        return failure.exitcode < 0 or any(p in _failure_message(failure) for p in _PEER_LOST)

    return min(failures.items(), key=lambda kv: (knock_on(kv[1]), kv[1].timestamp, kv[0]))


def _failure_message(failure) -> str:  # noqa: ANN001
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", msg)
        if isinstance(msg, dict):
            msg = msg.get("message", str(msg))
    text = str(msg or f"exit code {failure.exitcode}").strip().splitlines()
    return text[-1] if text else f"exit code {failure.exitcode}"
