"""The training loop: generic over models (losses come from the task specs and the model's own aux terms),
validation-only early stopping, atomic best/last checkpoints, exact resume, progress and JSON-lines logs."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlrec import metrics as M
from mtlrec.data.batches import BatchIterator
from mtlrec.data.preprocess import EncodedData
from mtlrec.errors import NonFiniteLoss, RunInterrupted, SettingsError, UserError, unknown_name
from mtlrec.layers import torchrec_embedding as trec
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.capabilities import EpochStats, OptimizerGroups
from mtlrec.train import checkpoint as ckpt
from mtlrec.train import distributed
from mtlrec.train.allocator import ALLOCATORS, apply_allocator
from mtlrec.train.device import FiniteFlag, model_device, move_batch, resolve_device, set_tf32
from mtlrec.train.optim import EMBEDDING_EPS, EMBEDDING_OPTIMIZERS, build_optimizers
from mtlrec.train.precision import PRECISIONS, autocast, check_precision, grad_scaler
from mtlrec.train.weighting import WeightingStrategy, create_weighting, list_weightings


@dataclass
class TrainConfig:
    """Training settings. ``monitor``: the validation metric for early stopping and model selection, written
    ``task.metric`` (e.g. ``income.auc``) or ``mean.metric`` (mean over the tasks that report it); default: the
    first task's first metric. ``checkpoint_every``: also write the last checkpoint every N steps (0: only at
    epoch ends). ``precision``: ``fp32``, ``bf16`` (autocast on CPU and CUDA) or ``fp16`` (CUDA autocast with a
    gradient scaler). ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. ``tf32``: TF32
    matmuls on CUDA. ``embedding_optimizer``: ``adam`` (lazy Adam) or ``adagrad``, for the embedding tables (the
    fused table, the TorchRec tables; sharded TorchRec tables on CPU need ``adagrad``). ``embedding_plan``: how
    the TorchRec backend's tables are sharded over several processes: ``table_wise``, ``column_wise``,
    ``row_wise`` (CUDA) or ``auto`` (TorchRec's planner). ``allocator``: ``reuse`` (keep freed memory for the next
    step's large tensors instead of paying page faults on fresh ones; :mod:`mtlrec.train.allocator`) or
    ``system``. Invalid values raise
    :class:`~mtlrec.errors.UserError` naming ``train.<field>`` when the config is built."""

    epochs: int = 10
    batch_size: int = 2048
    eval_batch_size: int = 8192
    lr: float = 1e-3
    embedding_lr: float | None = None
    weight_decay: float = 0.0
    seed: int = 0
    monitor: str | None = None
    patience: int = 3
    min_delta: float = 0.0
    weighting: str = "fixed"
    weighting_params: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    precision: str = "fp32"
    threads: int | None = None
    progress: bool = True
    grad_clip: float | None = None
    device: str = "auto"
    tf32: bool = False
    embedding_optimizer: str = "adam"
    embedding_plan: str = "table_wise"
    allocator: str = "reuse"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises ``UserError("train.<field>: ...")`` for the first bad one."""
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        _check_int("seed", self.seed, minimum=None)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1)
        _check_number("lr", self.lr, positive=True)
        if self.embedding_lr is not None:
            _check_number("embedding_lr", self.embedding_lr, positive=True)
        _check_number("weight_decay", self.weight_decay, positive=False)
        _check_number("min_delta", self.min_delta, positive=False)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, positive=True)
        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS, where="train.precision")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise unknown_name(
                "embedding optimizer", self.embedding_optimizer, EMBEDDING_OPTIMIZERS, where="train.embedding_optimizer"
            )
        if self.embedding_plan not in trec.PLANS:
            raise unknown_name("embedding plan", self.embedding_plan, trec.PLANS, where="train.embedding_plan")
        if self.allocator not in ALLOCATORS:
            raise unknown_name("allocator", self.allocator, ALLOCATORS, where="train.allocator")
        if self.weighting not in list_weightings():
            raise unknown_name("weighting", self.weighting, list_weightings(), where="train.weighting")
        if not isinstance(self.weighting_params, dict):
            raise UserError(f"train.weighting_params: expected a mapping, got {type(self.weighting_params).__name__}")
        if self.monitor is not None and (not isinstance(self.monitor, str) or "." not in self.monitor):
            raise UserError(
                f"train.monitor: expected 'task.metric' or 'mean.metric' (e.g. 'click.auc'), got {self.monitor!r}"
            )


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"train.{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"train.{name}: must be >= {minimum}, got {value}")


def _check_number(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
        raise UserError(f"train.{name}: expected a number, got {value!r}{hint}")
    if not math.isfinite(value):
        raise UserError(f"train.{name}: must be finite, got {value}")
    if positive and value <= 0:
        raise UserError(f"train.{name}: must be > 0, got {value}")
    if not positive and value < 0:
        raise UserError(f"train.{name}: must be >= 0, got {value}")


@dataclass
class FitResult:
    """``best_epoch`` is 1-based (0: no epoch finished), as in ``log.jsonl`` and the progress bar."""

    best_epoch: int
    best_value: float
    monitor: str
    history: list[dict[str, Any]]
    stopped_early: bool
    interrupted: bool = False


class EvaluationStopped(Exception):
    """Raised by :func:`predict` / :func:`evaluate` when their ``should_stop`` callback says so."""


def evaluate(
    model: MultiTaskModel,
    data: EncodedData,
    batch_size: int = 8192,
    precision: str = "fp32",
    *,
    should_stop: Callable[[], bool] | None = None,
    device=None,
) -> dict[str, dict[str, float]]:
    """Each task's metrics over its sample space (rows whose mask is 1) as plain floats, GAUC over the task's
    ``group`` and a funnel model's CTCVR (:func:`mtlrec.metrics.score_tasks`), computed on CPU from the scores of
    the whole split (under several processes every rank scores a slice and the scores are gathered)."""
    preds = predict(model, data, batch_size, precision, should_stop=should_stop, device=device)
    return M.score_tasks(model, data, preds)


@torch.no_grad()
def predict(
    model: MultiTaskModel,
    data: EncodedData,
    batch_size: int = 8192,
    precision: str = "fp32",
    logits: bool = False,
    *,
    should_stop: Callable[[], bool] | None = None,
    device=None,
) -> dict[str, np.ndarray]:
    """Scores for every row, in row order: probabilities (binary tasks) or values (regression tasks); with
    ``logits`` the heads' raw outputs (pre-sigmoid for binary tasks). ``should_stop`` is asked between batches;
    when it returns True, :class:`EvaluationStopped` is raised. Runs on ``device`` (moving the model there;
    default: where the model is), in batches; the scores come back to the host once."""
    dev = resolve_device(device, where="--device") if device is not None else model_device(model)
    model.to(dev)
    ctx = distributed.current()
    if ctx is None:
        batches = BatchIterator(data, batch_size).epoch(0)
    else:  # every rank scores a contiguous slice (gathered below in row order) in as many batches as the others
        batches = distributed.slice_batches(data, batch_size, ctx)
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in model.task_names}
    try:
        for batch in batches:
            if should_stop is not None and should_stop():
                raise EvaluationStopped
            with autocast(precision, dev):
                out = model(move_batch(batch, dev))
            for t, v in (out.logits if logits else model.predict_proba(out)).items():
                chunks[t].append(v.float())
    finally:
        model.train(was_training)
    scores = {t: torch.cat(v).cpu().numpy() if v else np.zeros(0, np.float32) for t, v in chunks.items()}
    return {t: distributed.gather_rows(v, dev) for t, v in scores.items()}


def resolve_monitor(model: MultiTaskModel, monitor: str | None) -> tuple[str, str, bool]:
    """``(task or 'mean', metric, higher_is_better)`` for a monitor string; ``UserError`` (key ``train.monitor``)
    for a task the model does not have or a metric no monitored task reports."""
    if monitor is None:
        t = model.tasks[0]
        return t.name, t.metrics[0], M.higher_is_better(t.metrics[0])
    task, _, metric = monitor.partition(".")
    if not metric:
        raise UserError(f"train.monitor: expected 'task.metric' or 'mean.metric', got {monitor!r}")
    if task != "mean" and task not in model.task_names:
        raise unknown_name("task", task, ["mean", *model.task_names], where=f"train.monitor {monitor!r}")
    reported = [m for t in model.tasks if task in ("mean", t.name) for m in t.metrics]
    if metric not in reported:
        whose = "any task" if task == "mean" else f"task {task!r}"
        raise unknown_name(
            f"metric (not reported by {whose})", metric, sorted(set(reported)), where=f"train.monitor {monitor!r}"
        )
    return task, metric, M.higher_is_better(metric)


def monitored_value(scores: dict[str, dict[str, float]], task: str, metric: str) -> float:
    if task == "mean":
        vals = [s[metric] for s in scores.values() if metric in s]
        return float(np.mean(vals)) if vals else float("nan")
    return float(scores[task][metric])


# fields of TrainConfig a resume may change: the new value is what the rest of the run uses
RESUME_MAY_CHANGE = (
    "epochs",
    "eval_batch_size",
    "checkpoint_every",
    "threads",
    "progress",
    "patience",
    "allocator",
)


class Trainer:
    """Trains one model on a train split with validation-only model selection.

    Files in ``out_dir``: ``last.pt`` (everything needed to resume exactly: model, optimizers, weighting state,
    RNG state, epoch and batch position, early-stopping state and history, as they were right after the last
    completed step), ``last.prev.pt`` (the one before), ``best.pt`` (the best validation model), ``log.jsonl`` (one
    JSON object per finished epoch, epochs 1-based) and, when ``run_info`` is given, ``run.json`` (written right
    after the first checkpoint of a new run, so a rerun that fails before that leaves the old run untouched). All
    writes are atomic; stale ``*.tmp`` files of killed writes are removed when ``fit`` starts. SIGINT / SIGTERM
    during ``fit`` finish the current step, save ``last.pt`` and raise :class:`~mtlrec.errors.RunInterrupted`.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        weighting: WeightingStrategy | None = None,
        *,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.cfg = config
        config.validate()
        self.device = resolve_device(config.device)
        self.dist = distributed.current()
        self.writer = distributed.is_writer()  # only rank 0 writes files
        check_precision(config.precision, self.device)
        set_tf32(config.tf32, self.device)
        model.to(self.device)
        distributed.broadcast_parameters(model)
        self.scaler = grad_scaler(config.precision, self.device)
        if self.scaler is not None and config.weighting in ("gradnorm", "pcgrad"):
            raise UserError(
                f"train.weighting: {config.weighting!r} forms per-task gradients, which fp16 loss "
                "scaling would skew; use train.precision 'bf16' or 'fp32' with it"
            )
        self._finite = FiniteFlag()
        self.out_dir = Path(out_dir) if out_dir else None
        self.run_info = run_info
        self.monitor_task, self.monitor_metric, self.higher_better = resolve_monitor(model, config.monitor)
        if config.threads:
            torch.set_num_threads(config.threads)
        apply_allocator(config.allocator)
        self.embedding_plan = self._shard_embeddings()
        if self.embedding_plan is not None and self.run_info is not None:
            self.run_info = {**self.run_info, "embedding_plan": self.embedding_plan}
        self.optimizers = build_optimizers(
            model,
            config.lr,
            embedding_lr=config.embedding_lr,
            weight_decay=config.weight_decay,
            groups=model.optimizer_groups() if isinstance(model, OptimizerGroups) else None,
            embedding_kind=config.embedding_optimizer,
        )
        self.weighting = weighting or create_weighting(
            config.weighting,
            [t.weight for t in model.tasks],
            task_types=[t.type for t in model.tasks],
            **config.weighting_params,
        )
        extra = self.weighting.parameters()  # learnable weighting state (uncertainty's log σ², GradNorm's w)
        if extra:
            self.optimizers.append(torch.optim.Adam(extra, lr=self.weighting.lr or config.lr))
        self.state: dict[str, Any] = {
            "epoch": 0,  # epochs completed
            "batch": 0,  # batches completed in the current epoch
            "step": 0,
            "best_value": None,
            "best_epoch": 0,  # 1-based; 0 = none yet
            "bad_epochs": 0,
            "history": [],
        }
        self._resumed = False
        self._run_files_written = False  # run.json written (or the run folder claimed) by this run
        self._stop_signal: int | None = None

    def _shard_embeddings(self) -> dict[str, Any] | None:
        """Under several processes, the TorchRec backend's tables sharded over the ranks (``train.embedding_plan``)
        and updated by TorchRec's fused optimizer matching ``train.embedding_optimizer``; returns the plan record
        (``{"plan", "optimizer", "tables": {table: {sharding_type, compute_kernel, ranks}}}``) or None."""
        layers = [m for m in self.model.modules() if isinstance(m, trec.TorchRecEmbedding) and m.tables]
        if self.dist is None or not layers:
            return None
        if self.scaler is not None:
            raise SettingsError(
                "train.precision 'fp16': the sharded TorchRec tables are updated inside the backward pass, where "
                "the gradient scaler cannot unscale them; use 'bf16' or 'fp32'"
            )
        cfg = self.cfg
        kind = cfg.embedding_optimizer
        compute = "cuda" if self.device.type == "cuda" else "cpu"
        params = trec.fused_params(kind, cfg.embedding_lr or cfg.lr, EMBEDDING_EPS[kind], compute)
        tables: dict[str, dict] = {}
        for layer in layers:
            tables.update(layer.shard(cfg.embedding_plan, self.device, params))
        return {
            "plan": cfg.embedding_plan,
            "world_size": self.dist.world_size,
            "optimizer": params["optimizer"].value,
            "tables": tables,
        }

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict in the unsharded layout (sharded tables gathered: every rank calls this)."""
        return trec.full_state_dict(self.model)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        trec.load_full_state_dict(self.model, state)

    def num_parameters(self) -> int:
        """The model's parameters, sharded tables counted whole (not this rank's shards)."""
        own = sum(p.numel() for p in self.model.parameters() if not hasattr(p, "_in_backward_optimizers"))
        return own + sum(layer.num_table_parameters() for _, layer in trec.sharded_embeddings(self.model))

    @property
    def monitor(self) -> str:
        return f"{self.monitor_task}.{self.monitor_metric}"

    # ---- one optimisation step -----------------------------------------------------------------------------
    def train_step(self, batch, global_rows: int | None = None) -> tuple[float | torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the total loss (a float on CPU; a detached device tensor on a GPU, read
        back at a pace) and the detached task losses. ``global_rows``: the rows of the global batch ``batch`` is
        this rank's share of (default: ``len(batch)``)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        batch = move_batch(batch, self.device)
        with autocast(self.cfg.precision, self.device):
            out = self.model(batch)
        # under several processes: the losses of the global batch (see train/distributed.py); identity otherwise
        losses = distributed.global_task_losses(self.model.task_losses(out, batch), batch.masks)
        total = self.weighting.combine(losses, self.state["epoch"])
        for aux in out.aux_losses.values():
            total = total + distributed.global_aux_loss(aux.float(), len(batch), global_rows or len(batch))
        loss = self.checked_loss(total, batch)
        scaled = total if self.scaler is None else self.scaler.scale(total)
        self.weighting.backward(scaled, losses, self.model.shared_parameters())
        distributed.sync_gradients([p for o in self.optimizers for g in o.param_groups for p in g["params"]])
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        if self.cfg.grad_clip:
            dense = [p for p in self.model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, self.cfg.grad_clip)
        for opt in self.optimizers:
            if self.scaler is None:
                opt.step()
            else:
                self.scaler.step(opt)
        if self.scaler is not None:
            self.scaler.update()
        return loss, losses.detach()

    def checked_loss(self, total: torch.Tensor, batch) -> float | torch.Tensor:
        """The step's loss; :class:`~mtlrec.errors.NonFiniteLoss` when it is NaN/inf. Called before the backward
        pass, so a bad batch never reaches the weights and the last checkpoint stays the last good state. On CPU one
        host read per step (the loss is logged anyway); on a GPU a device flag read back every few steps
        (:class:`~mtlrec.train.device.FiniteFlag`), so no step waits for the device."""
        if self.device.type != "cpu":
            if self._finite.bad(total, self.state["step"]):
                raise NonFiniteLoss(
                    f"loss became non-finite at step {self._finite.first_bad_step + 1} (checked at a pace on "
                    f"{self.device}); lower train.lr or set train.grad_clip; the last checkpoint is the last good state"
                )
            return total.detach()
        loss = float(total.detach())
        if not math.isfinite(loss):
            raise NonFiniteLoss(self._non_finite_cause(batch, loss))
        return loss

    def _non_finite_cause(self, batch, loss: float) -> str:
        s = self.state
        where = f"at step {s['step'] + 1} (epoch {s['epoch'] + 1}, batch {s['batch'] + 1})"
        names = list(getattr(self.model.layout, "numeric", ()))
        bad_num = (~torch.isfinite(batch.num)).any(0) if batch.num.numel() else torch.zeros(0, dtype=torch.bool)
        if bool(bad_num.any()):
            cols = [names[j] if j < len(names) else f"#{j}" for j in bad_num.nonzero().flatten().tolist()]
            return (
                f"loss became {loss} {where}: numeric input column {cols[0]!r} holds a non-finite value (NaN or inf)"
                + (f" (also {', '.join(map(repr, cols[1:]))})" if len(cols) > 1 else "")
                + "; clean or clip that column in the data"
            )
        bad_lab = (~torch.isfinite(batch.labels) & (batch.masks > 0)).any(0)
        if bool(bad_lab.any()):
            task = self.model.task_names[int(bad_lab.nonzero().flatten()[0])]
            return (
                f"loss became {loss} {where}: label column of task {task!r} holds a non-finite value (NaN or inf); "
                "fix that label column in the data"
            )
        lr = self.cfg.lr if self.cfg.embedding_lr is None else f"{self.cfg.lr} (embedding_lr {self.cfg.embedding_lr})"
        clip = f"train.grad_clip (now {self.cfg.grad_clip})" if self.cfg.grad_clip else "set train.grad_clip"
        return (
            f"loss became {loss} {where} with lr {lr}: the training diverged; lower train.lr or {clip}; "
            "the last checkpoint is the last good state"
        )

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        """Tensors and plain values only (loadable with ``weights_only=True``); the model in the unsharded layout
        and, with sharded TorchRec tables, their fused optimizer's state gathered likewise (``embedding_optimizer``,
        ``embedding_plan``). Every rank calls this when tables are sharded (the gathers are collective)."""
        if "epoch_task_loss" in self.state:
            self._host_epoch_sums()
        state = {
            "model": self.model_state(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "weighting": self.weighting.state_dict(),
            "trainer": _plain(dict(self.state)),
            "rng_torch": torch.get_rng_state(),
            "config": _plain(asdict(self.cfg)),
            "run_info_json": _run_info_json(self.run_info),
        }
        if self.embedding_plan is not None:
            state["embedding_plan_json"] = json.dumps(self.embedding_plan, sort_keys=True)
            state["embedding_optimizer"] = {
                name: layer.optimizer_state() for name, layer in trec.sharded_embeddings(self.model)
            }
        return state

    def save_last(self) -> None:
        # with sharded tables every rank takes part in gathering them; only the writer writes
        if self.out_dir and (self.writer or self.embedding_plan is not None):
            state = self._checkpoint_state()
            if self.writer:
                self._claim_run_folder()
                ckpt.save_rotating(state, self.out_dir / "last.pt")
                self._write_run_info()

    def _save_best(self, epoch: int, value: float) -> None:
        if self.out_dir and (self.writer or self.embedding_plan is not None):
            model_state = self.model_state()
            if not self.writer:
                return
            self._claim_run_folder()
            state = {
                "model": model_state,
                "epoch": epoch,
                "monitor": self.monitor,
                "value": _plain(value),
                "run_info_json": _run_info_json(self.run_info),
            }
            ckpt.atomic_save(state, self.out_dir / "best.pt")
            self._write_run_info()

    def _claim_run_folder(self) -> None:
        """Before the first checkpoint of a new (not resumed) run: remove the files of an earlier run in the same
        folder, so the folder never mixes old weights with new metadata (a rerun that fails before this point
        leaves the earlier run whole)."""
        if self._run_files_written or self._resumed or not self.out_dir:
            return
        stale = ["last.pt", ckpt.prev_path("last.pt").name, "best.pt", "log.jsonl", "result.json"]
        if self.run_info is not None:
            stale.append("run.json")
        for name in stale:
            (self.out_dir / name).unlink(missing_ok=True)

    def _write_run_info(self) -> None:
        if not self._run_files_written and self.out_dir:
            if self.run_info is not None:
                ckpt.atomic_write_text(self.out_dir / "run.json", json.dumps(self.run_info, indent=2, default=str))
            self._run_files_written = True

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore from ``last.pt`` (or ``path``); returns False when there is nothing to resume. A damaged or
        missing ``last.pt`` falls back to ``last.prev.pt`` with a warning; when neither loads, ``UserError``. A
        checkpoint whose model, run metadata or training settings differ from this trainer's is refused with the
        differences listed (settings in :data:`RESUME_MAY_CHANGE` may change: the new value is used)."""
        path = Path(path) if path else (self.out_dir / "last.pt" if self.out_dir else None)
        if path is None or not (path.exists() or ckpt.prev_path(path).exists()):
            return False
        state, used = ckpt.load_with_fallback(path, warn=lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3))
        self._check_same_sharding(state, used)
        self._check_resumable(state, used)
        try:
            self.load_model_state(state["model"])
            for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(s)
            for name, layer in trec.sharded_embeddings(self.model):
                layer.load_optimizer_state(state["embedding_optimizer"][name], step=state["trainer"]["step"])
            self.weighting.load_state_dict(state["weighting"])
            trainer = dict(state["trainer"])
            rng = state["rng_torch"]
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            detail = " ".join(str(e).split())[:240] or type(e).__name__
            raise UserError(
                f"{used}: cannot resume: the checkpoint does not match the configured model ({detail})"
            ) from None
        self.state = trainer
        torch.set_rng_state(rng)
        self._resumed = True
        self._run_files_written = True
        if self.out_dir:
            self._restore_run_info(state)
        return True

    def _check_same_sharding(self, state: dict[str, Any], used: Path) -> None:
        """A checkpoint of sharded TorchRec tables resumes under the same plan (the same number of processes): its
        fused optimizer state has no place elsewhere (evaluate, predict and export load it anywhere)."""
        saved = json.loads(state["embedding_plan_json"]) if state.get("embedding_plan_json") else None
        if saved != self.embedding_plan:

            def what(plan: dict | None) -> str:
                if plan is None:
                    return "unsharded tables"
                return f"tables sharded {plan['plan']} over {plan['world_size']} processes ({plan['optimizer']})"

            raise UserError(
                f"{used}: cannot resume: the checkpoint holds {what(saved)}, this run {what(self.embedding_plan)}; "
                "resume with the number of processes and train.embedding_plan the run was started with"
            )

    def _check_resumable(self, state: dict[str, Any], used: Path) -> None:
        saved_cfg = state.get("config") or {}
        now = _plain(asdict(self.cfg))
        diff = [
            f"train.{k}: {saved_cfg[k]!r} -> {now[k]!r}"
            for k in now
            if k in saved_cfg and k not in RESUME_MAY_CHANGE and saved_cfg[k] != now[k]
        ]
        saved_info = json.loads(state["run_info_json"]) if state.get("run_info_json") else None
        if saved_info is not None and self.run_info is not None:
            mine = json.loads(_run_info_json(self.run_info))
            diff += [
                f"{k} differs"
                for k in sorted(set(saved_info) | set(mine))
                if k != "train" and saved_info.get(k) != mine.get(k)
            ]
        if diff:
            raise UserError(
                f"{used}: cannot resume: the run was started with other settings ({'; '.join(diff)}); "
                "rerun without --resume to start over, or restore the original settings"
            )

    def _restore_run_info(self, state: dict[str, Any]) -> None:
        """``run.json`` belongs with the checkpoint: rewrite it when a kill left it missing or out of date. With
        ``run_info`` given (and checked against the checkpoint's), the new one is recorded: the settings a resume may
        change are the ones the rest of the run uses."""
        text = _run_info_json(self.run_info) if self.run_info is not None else state.get("run_info_json")
        if not text:
            return
        target = self.out_dir / "run.json"
        info = json.loads(text)
        try:
            current = json.loads(target.read_text())
        except (OSError, ValueError):
            current = None
        if current != info:
            ckpt.atomic_write_text(target, json.dumps(info, indent=2, default=str))

    # ---- checks before the first step ----------------------------------------------------------------------
    def check_data(self, train: EncodedData, valid: EncodedData) -> None:
        """``UserError`` before any training for splits the run cannot learn from or select on: an empty split, a
        task whose mask selects no training rows, a monitored binary task with one class in validation."""
        if len(train) == 0:
            raise UserError("the training split has no rows")
        if len(valid) == 0:
            raise UserError("the validation split has no rows (model selection needs it)")
        train_rows = (np.asarray(train.masks) > 0).sum(0)
        for j, t in enumerate(self.model.tasks):
            if train_rows[j] == 0:
                col = f"its mask column {t.mask!r} is never 1" if t.mask else "no row is labelled"
                raise UserError(f"task {t.name!r}: no training rows ({col}); fix the mask column or drop the task")
        if self.monitor_metric not in ("auc", "gauc"):
            return
        labels, masks = np.asarray(valid.labels), np.asarray(valid.masks) > 0
        for j, t in enumerate(self.model.tasks):
            if self.monitor_task not in ("mean", t.name) or self.monitor_metric not in t.metrics:
                continue
            y = labels[masks[:, j], j]
            if y.size == 0 or y.min() == y.max():
                what = "no rows" if y.size == 0 else f"only label {float(y[0]):g}"
                others = [f"{t.name}.{m}" for m in t.metrics if m != self.monitor_metric] or ["another task"]
                raise UserError(
                    f"train.monitor {self.monitor!r}: the validation split has {what} for task {t.name!r}, so its "
                    f"{self.monitor_metric.upper()} is undefined; monitor {others[0]} or another task"
                )

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(
        self,
        train: EncodedData,
        valid: EncodedData,
        *,
        max_steps: int | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` or early stopping. ``max_steps`` stops after that many optimisation steps in
        total (the last checkpoint is written first), as an interruption would. ``on_step(step, loss)`` is called
        after every completed step (``step`` 1-based), ``on_epoch_end(record)`` after every epoch's checkpoint."""
        cfg = self.cfg
        self.check_data(train, valid)
        if self.out_dir and self.writer:
            ckpt.remove_stale_tmp(self.out_dir)
            if self._resumed:
                self._write_log()  # a kill between last.pt and log.jsonl left the log one epoch short
        if not self._resumed and self.state["step"] == 0 and self.state["batch"] == 0:
            torch.manual_seed(cfg.seed)
        # this rank's share of each global batch (the whole batch in one process)
        it = distributed.ShardedBatches(BatchIterator(train, cfg.batch_size, shuffle=True, seed=cfg.seed), self.dist)
        num_batches = it.num_batches()
        self.model.train()
        with _StopSignals(self):
            while self.state["epoch"] < cfg.epochs and not self.state.get("stopped_early"):
                epoch = self.state["epoch"]
                if self.state["batch"] == 0 or "epoch_task_loss" not in self.state:
                    # this epoch's sums, in the state so a mid-epoch resume logs the whole epoch exactly
                    self.state.update(
                        epoch_task_loss=torch.zeros(len(self.model.tasks), dtype=torch.float64),
                        epoch_batches=0,
                        epoch_loss_sum=0.0,
                        epoch_samples=0,
                        epoch_seconds=0.0,
                    )
                if self._train_epoch(it, epoch, num_batches, max_steps, on_step):
                    return self._result(interrupted=True)
                try:
                    scores = evaluate(
                        self.model, valid, cfg.eval_batch_size, cfg.precision, should_stop=self._stop_requested
                    )
                except EvaluationStopped:
                    self._interrupt(f"during the validation of epoch {epoch + 1}/{cfg.epochs}")
                self._end_epoch(epoch, scores)
                distributed.barrier()  # best.pt/last.pt are complete before any rank reads them
                if on_epoch_end:
                    on_epoch_end(self.state["history"][-1])
                if self._stop_requested():
                    self._interrupt(f"after epoch {epoch + 1}/{cfg.epochs}", save=False)
        return self._result()

    def _train_epoch(self, it, epoch: int, num_batches: int, max_steps, on_step) -> bool:
        """Train the rest of epoch ``epoch``; True when ``max_steps`` was reached (the checkpoint is written)."""
        cfg, st = self.cfg, self.state
        bar = _progress(num_batches, st["batch"], f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.writer)
        t0 = time.perf_counter()
        try:
            for batch in it.epoch(epoch, start_batch=st["batch"]):
                loss, task_losses = self.train_step(batch, it.last_global_size)
                # accumulated where the losses are (no host round trip per step on a GPU)
                if st["epoch_task_loss"].device != task_losses.device:
                    st["epoch_task_loss"] = st["epoch_task_loss"].to(task_losses.device)
                st["epoch_task_loss"] += task_losses.double()
                st["epoch_batches"] += 1
                st["epoch_loss_sum"] = st["epoch_loss_sum"] + loss
                st["epoch_samples"] += it.last_global_size
                st["batch"] += 1
                st["step"] += 1
                if bar is not None:
                    bar.update(1)
                    if st["batch"] % 10 == 0:
                        elapsed = st["epoch_seconds"] + time.perf_counter() - t0
                        bar.set_postfix(  # shown at the next redraw, which mininterval paces
                            loss=f"{float(st['epoch_loss_sum']) / st['epoch_batches']:.4f}",
                            samples_s=f"{st['epoch_samples'] / max(elapsed, 1e-9):,.0f}",
                            refresh=False,
                        )
                if on_step:
                    on_step(st["step"], float(loss))
                if max_steps is not None and st["step"] >= max_steps:
                    st["epoch_seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._host_epoch_sums()
                    self.save_last()
                    distributed.barrier()
                    return True
                if self._stop_requested():
                    st["epoch_seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._interrupt(f"at epoch {epoch + 1}/{cfg.epochs}, batch {st['batch']}/{num_batches}")
                if cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0:
                    self.save_last()
        finally:
            st["epoch_seconds"] += time.perf_counter() - t0
            if bar is not None:
                bar.close()
        return False

    def _end_epoch(self, epoch: int, scores: dict[str, dict[str, float]]) -> None:
        """Model selection, the weighting's epoch hook, the epoch's log record (``log.jsonl``) and ``last.pt``."""
        st = self.state
        if self._finite.flush():  # a non-finite loss since the last read-back (GPU)
            raise NonFiniteLoss(f"loss became non-finite at step {self._finite.first_bad_step + 1}; lower train.lr")
        self._host_epoch_sums()
        # metrics over the whole validation split are the same on every rank; rank 0's decision is final
        value = distributed.broadcast_object(monitored_value(scores, self.monitor_task, self.monitor_metric))
        improved = self._is_improvement(value)
        if improved:
            st.update(best_value=value, best_epoch=epoch + 1, bad_epochs=0)
            self._save_best(epoch + 1, value)
            self._best_in_memory = {k: v.detach().clone() for k, v in self.model_state().items()}
        else:
            st["bad_epochs"] += 1
        self.weighting.on_epoch_end((st["epoch_task_loss"] / max(st["epoch_batches"], 1)).float())
        record = _plain(
            {
                "epoch": epoch + 1,
                "step": st["step"],
                "train_loss": st["epoch_loss_sum"] / max(st["epoch_batches"], 1),
                "train_samples_per_s": st["epoch_samples"] / max(st["epoch_seconds"], 1e-9),
                "train_seconds": st["epoch_seconds"],
                "valid": scores,
                "monitor": self.monitor,
                "monitor_value": value,
                "improved": improved,
            }
        )
        stats = self.model.epoch_stats() if isinstance(self.model, EpochStats) else {}
        if stats:  # e.g. the VG plug-in's Γ over this epoch (from a mid-epoch resume on: the rest of the epoch)
            record["model_stats"] = _plain(stats)
        st["history"].append(record)
        st["epoch"] += 1
        st["batch"] = 0
        # once stopped early, a resumed run does not train on (even with more epochs)
        st["stopped_early"] = st["bad_epochs"] >= self.cfg.patience
        self.save_last()
        self._write_log()

    def _host_epoch_sums(self) -> None:
        """The epoch's loss sums as host values (they live on the device during a GPU epoch)."""
        st = self.state
        st["epoch_task_loss"] = st["epoch_task_loss"].cpu()
        st["epoch_loss_sum"] = float(st["epoch_loss_sum"])

    # ---- interruption --------------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return self._stop_signal is not None

    def _interrupt(self, where: str, save: bool = True) -> None:
        if save:
            self.save_last()
        sig = self._stop_signal
        name = signal.Signals(sig).name if sig is not None else "an interrupt"
        st = self.state
        saved = (
            f"saved {self.out_dir / 'last.pt'}; rerun the same command with --resume to continue"
            if self.out_dir
            else "nothing saved (no run folder)"
        )
        raise RunInterrupted(f"interrupted by {name} {where} (step {st['step']}): {saved}")

    def _is_improvement(self, value: float) -> bool:
        best = self.state["best_value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return best is None
        if best is None:
            return True
        return value > best + self.cfg.min_delta if self.higher_better else value < best - self.cfg.min_delta

    def _result(self, interrupted: bool = False) -> FitResult:
        return FitResult(
            self.state["best_epoch"],
            self.state["best_value"],
            self.monitor,
            list(self.state["history"]),
            bool(self.state.get("stopped_early", False)),
            interrupted,
        )

    def _write_log(self) -> None:
        """``log.jsonl`` rewritten from the saved history: each finished epoch exactly once, in order."""
        if self.out_dir and self.writer:
            text = "".join(json.dumps(r) + "\n" for r in self.state["history"])
            ckpt.atomic_write_text(self.out_dir / "log.jsonl", text)

    def load_best(self) -> None:
        """Load the best validation weights (from ``best.pt`` or memory) into the model."""
        if self.out_dir and (self.out_dir / "best.pt").exists():
            self.load_model_state(ckpt.load(self.out_dir / "best.pt")["model"])
        elif getattr(self, "_best_in_memory", None) is not None:
            self.load_model_state(self._best_in_memory)


class _StopSignals:
    """While training: SIGINT and SIGTERM only set a flag, so the current step (or checkpoint write) finishes and
    the trainer saves the state of the last completed step before it stops. A second SIGINT raises
    ``KeyboardInterrupt`` at once. Only the main thread can install handlers; elsewhere this does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.trainer._stop_signal is not None:
            raise KeyboardInterrupt
        self.trainer._stop_signal = signum

    def __enter__(self) -> _StopSignals:
        self.trainer._stop_signal = None
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def _plain(x: Any) -> Any:
    """Numpy scalars/arrays to Python numbers/lists, recursively (tensors are kept): what ``weights_only`` loads."""
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, (str, int)) else k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _run_info_json(info: dict[str, Any] | None) -> str | None:
    return json.dumps(info, default=str, sort_keys=True) if info is not None else None


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # redirected to a file or pipe, a redraw every 0.1 s fills the log: redraw every 30 s instead
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True, mininterval=interval
    )
