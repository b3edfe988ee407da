"""The training loop: generic over models (losses come from the task specs and the model's own aux terms),
validation-only early stopping, atomic best/last checkpoints, exact resume, progress and JSON-lines logs."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlrec import metrics as M
from mtlrec.data.batches import BatchIterator
from mtlrec.data.preprocess import EncodedData
from mtlrec.errors import UserError
from mtlrec.models.base import MultiTaskModel
from mtlrec.train import checkpoint as ckpt
from mtlrec.train import distributed
from mtlrec.train.device import FiniteFlag, model_device, move_batch, resolve_device, set_tf32
from mtlrec.train.optim import build_optimizers
from mtlrec.train.precision import autocast, check_precision, grad_scaler
from mtlrec.train.weighting import WeightingStrategy, create_weighting


@dataclass
class TrainConfig:
    """Training settings. ``monitor``: the validation metric for early stopping and model selection, written
    ``task.metric`` (e.g. ``income.auc``) or ``mean.metric`` (mean over the tasks that report it); default: the
    first task's first metric. ``checkpoint_every``: also write the last checkpoint every N steps (0: only at
    epoch ends). ``precision``: ``fp32``, ``bf16`` (autocast on CPU and CUDA) or ``fp16`` (CUDA autocast with a
    gradient scaler). ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. ``tf32``: TF32
    matmuls on CUDA."""

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


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    monitor: str
    history: list[dict[str, Any]]
    stopped_early: bool
    interrupted: bool = False


def evaluate(
    model: MultiTaskModel, data: EncodedData, batch_size: int = 8192, precision: str = "fp32", *, device=None
) -> dict[str, dict[str, float]]:
    """Each task's metrics over its sample space (rows whose mask is 1), computed on CPU from the scores of the
    whole split (under several processes every rank scores a slice and the scores are gathered)."""
    preds = predict(model, data, batch_size, precision, device=device)
    labels, masks = np.asarray(data.labels), np.asarray(data.masks)
    out: dict[str, dict[str, float]] = {}
    for j, t in enumerate(model.tasks):
        keep = masks[:, j] > 0
        y, p = labels[keep, j], preds[t.name][keep]
        out[t.name] = {m: M.compute(m, y, p) for m in t.metrics}
    return out


@torch.no_grad()
def predict(
    model: MultiTaskModel,
    data: EncodedData,
    batch_size: int = 8192,
    precision: str = "fp32",
    logits: bool = False,
    *,
    device=None,
) -> dict[str, np.ndarray]:
    """Scores for every row, in row order: probabilities (binary tasks) or values (regression tasks); with
    ``logits`` the heads' raw outputs (pre-sigmoid for binary tasks). Runs on ``device`` (moving the model there;
    default: where the model is), in batches; the scores come back to the host once."""
    dev = resolve_device(device, where="--device") if device is not None else model_device(model)
    model.to(dev)
    ctx = distributed.current()
    if ctx is not None:  # every rank scores a contiguous slice; gathered below in row order
        data = data.take(slice(*distributed.shard_bounds(len(data), ctx.world_size, ctx.rank)))
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in model.task_names}
    try:
        for batch in BatchIterator(data, batch_size).epoch(0):
            with autocast(precision, dev):
                out = model(move_batch(batch, dev))
            for t, v in (out.logits if logits else model.predict_proba(out)).items():
                chunks[t].append(v.float())
    finally:
        model.train(was_training)
    scores = {t: torch.cat(v).cpu().numpy() if v else np.zeros(0, np.float32) for t, v in chunks.items()}
    return {t: distributed.gather_rows(v, dev) for t, v in scores.items()}


def resolve_monitor(model: MultiTaskModel, monitor: str | None) -> tuple[str, str, bool]:
    """``(task or 'mean', metric, higher_is_better)`` for a monitor string."""
    if monitor is None:
        t = model.tasks[0]
        return t.name, t.metrics[0], M.higher_is_better(t.metrics[0])
    task, _, metric = monitor.partition(".")
    if not metric:
        raise ValueError(f"monitor must look like 'task.metric' or 'mean.metric', got {monitor!r}")
    if task != "mean" and task not in model.task_names:
        raise ValueError(f"monitor {monitor!r}: no task {task!r}; tasks are {model.task_names}")
    if metric not in M.HIGHER_IS_BETTER:
        raise ValueError(f"monitor {monitor!r}: unknown metric {metric!r}")
    return task, metric, M.higher_is_better(metric)


def monitored_value(scores: dict[str, dict[str, float]], task: str, metric: str) -> float:
    if task == "mean":
        vals = [s[metric] for s in scores.values() if metric in s]
        return float(np.mean(vals)) if vals else float("nan")
    return scores[task][metric]


class Trainer:
    """Trains one model on a train split with validation-only model selection.

    Files in ``out_dir``: ``last.pt`` (everything needed to resume exactly: model, optimizers, weighting state,
    RNG state, epoch and batch position, early-stopping state), ``best.pt`` (the best validation model),
    ``log.jsonl`` (one JSON object per epoch). All checkpoint writes are atomic.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        weighting: WeightingStrategy | None = None,
    ) -> None:
        self.model = model
        self.cfg = config
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
        if config.threads:
            torch.set_num_threads(config.threads)
        self.optimizers = build_optimizers(
            model, config.lr, embedding_lr=config.embedding_lr, weight_decay=config.weight_decay
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
        self.monitor_task, self.monitor_metric, self.higher_better = resolve_monitor(model, config.monitor)
        self.state: dict[str, Any] = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best_value": None,
            "best_epoch": -1,
            "bad_epochs": 0,
            "history": [],
        }

    @property
    def monitor(self) -> str:
        return f"{self.monitor_task}.{self.monitor_metric}"

    # ---- one optimisation step -----------------------------------------------------------------------------
    def train_step(self, batch, global_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the (detached, on-device) total loss and task losses. ``global_rows``: the
        rows of the global batch ``batch`` is this rank's share of (default: ``len(batch)``)."""
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
        if self._finite.bad(total, self.state["step"]):  # reads back from a GPU only every few steps
            raise FloatingPointError(f"loss became non-finite at step {self._finite.first_bad_step}; lower the lr")
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
        return total.detach(), losses.detach()

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "weighting": self.weighting.state_dict(),
            "trainer": dict(self.state),
            "rng_torch": torch.get_rng_state(),
            "config": asdict(self.cfg),
        }

    def save_last(self) -> None:
        if self.out_dir and self.writer:
            ckpt.atomic_save(self._checkpoint_state(), self.out_dir / "last.pt")

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore from ``last.pt`` (or ``path``); returns False when there is nothing to resume."""
        path = Path(path) if path else (self.out_dir / "last.pt" if self.out_dir else None)
        if path is None or not path.exists():
            return False
        state = ckpt.load(path)  # onto the CPU; load_state_dict copies onto the model's device
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        self.weighting.load_state_dict(state["weighting"])
        self.state = dict(state["trainer"])
        torch.set_rng_state(state["rng_torch"])
        return True

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(
        self,
        train: EncodedData,
        valid: EncodedData,
        *,
        max_steps: int | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` or early stopping. ``max_steps`` stops after that many optimisation steps in
        total (the last checkpoint is written first), as an interruption would."""
        cfg = self.cfg
        if self.state["step"] == 0 and self.state["batch"] == 0:
            torch.manual_seed(cfg.seed)
        # this rank's share of each global batch (the whole batch in one process)
        it = distributed.ShardedBatches(BatchIterator(train, cfg.batch_size, shuffle=True, seed=cfg.seed), self.dist)
        self.model.train()
        stopped_early = False
        while self.state["epoch"] < cfg.epochs:
            epoch = self.state["epoch"]
            t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
            if self.state["batch"] == 0 or "epoch_task_loss" not in self.state:
                # per-task loss sums of this epoch (in the state so a mid-epoch resume keeps them exact)
                self.state["epoch_task_loss"] = torch.zeros(len(self.model.tasks), dtype=torch.float64)
                self.state["epoch_batches"] = 0
            bar = _progress(
                it.num_batches(), self.state["batch"], f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.writer
            )
            try:
                for batch in it.epoch(epoch, start_batch=self.state["batch"]):
                    loss, task_losses = self.train_step(batch, it.last_global_size)
                    # accumulated on the device: no host round trip per step
                    epoch_loss = self.state["epoch_task_loss"]
                    if epoch_loss.device != task_losses.device:
                        epoch_loss = self.state["epoch_task_loss"] = epoch_loss.to(task_losses.device)
                    epoch_loss += task_losses.double()
                    self.state["epoch_batches"] += 1
                    self.state["batch"] += 1
                    self.state["step"] += 1
                    seen += it.last_global_size
                    loss_sum, loss_n = loss_sum + loss.double(), loss_n + 1
                    if bar is not None:
                        bar.update(1)
                        if self.state["batch"] % 10 == 0:
                            bar.set_postfix(  # shown at the next redraw, which mininterval paces
                                loss=f"{float(loss_sum) / loss_n:.4f}",
                                samples_s=f"{seen / (time.perf_counter() - t0):,.0f}",
                                refresh=False,
                            )
                    if cfg.checkpoint_every and self.state["step"] % cfg.checkpoint_every == 0:
                        self.save_last()
                    if max_steps is not None and self.state["step"] >= max_steps:
                        self.save_last()
                        distributed.barrier()
                        return self._result(stopped_early, interrupted=True)
            except KeyboardInterrupt:
                self.save_last()  # nothing lost: resume continues from this batch
                raise
            finally:
                if bar is not None:
                    bar.close()
            train_time = time.perf_counter() - t0
            if self._finite.flush():  # a non-finite loss since the last read-back (GPU)
                raise FloatingPointError(f"loss became non-finite at step {self._finite.first_bad_step}; lower the lr")
            self.state["epoch_task_loss"] = self.state["epoch_task_loss"].cpu()
            loss_sum = float(loss_sum)
            self.weighting.on_epoch_end((self.state["epoch_task_loss"] / max(self.state["epoch_batches"], 1)).float())
            scores = evaluate(self.model, valid, cfg.eval_batch_size, cfg.precision)
            # metrics over the whole validation split are the same on every rank; rank 0's decision is final
            value = distributed.broadcast_object(monitored_value(scores, self.monitor_task, self.monitor_metric))
            improved = self._is_improvement(value)
            if improved:
                self.state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                if self.out_dir and self.writer:
                    ckpt.atomic_save(
                        {"model": self.model.state_dict(), "epoch": epoch, "monitor": self.monitor, "value": value},
                        self.out_dir / "best.pt",
                    )
                self._best_in_memory = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                self.state["bad_epochs"] += 1
            record = {
                "epoch": epoch,
                "step": self.state["step"],
                "train_loss": loss_sum / max(loss_n, 1),
                "train_samples_per_s": seen / max(train_time, 1e-9),
                "train_seconds": train_time,
                "valid": scores,
                "monitor": self.monitor,
                "monitor_value": value,
                "improved": improved,
            }
            self.state["history"].append(record)
            self._log(record)
            if on_epoch_end:
                on_epoch_end(record)
            self.state["epoch"] += 1
            self.state["batch"] = 0
            if self.state["bad_epochs"] >= cfg.patience:
                stopped_early = True
                self.state["epoch"] = cfg.epochs  # a resumed run must not train on
            self.save_last()
            distributed.barrier()  # best.pt/last.pt are complete before any rank reads them
            if stopped_early:
                break
        return self._result(stopped_early)

    def _is_improvement(self, value: float) -> bool:
        best = self.state["best_value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return best is None
        if best is None:
            return True
        return value > best + self.cfg.min_delta if self.higher_better else value < best - self.cfg.min_delta

    def _result(self, stopped_early: bool, interrupted: bool = False) -> FitResult:
        return FitResult(
            self.state["best_epoch"],
            self.state["best_value"],
            self.monitor,
            list(self.state["history"]),
            stopped_early,
            interrupted,
        )

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir and self.writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def load_best(self) -> None:
        """Load the best validation weights (from ``best.pt`` or memory) into the model."""
        if self.out_dir and (self.out_dir / "best.pt").exists():
            self.model.load_state_dict(ckpt.load(self.out_dir / "best.pt")["model"])
        elif getattr(self, "_best_in_memory", None) is not None:
            self.model.load_state_dict(self._best_in_memory)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # redirected to a file or pipe, a redraw every 0.1 s fills the log: redraw every 30 s instead
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True, mininterval=interval
    )
