"""Where training and inference run: device resolution, batch transfer, TF32, and a sync-free finiteness check.

``train.device`` is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under several
processes (torchrun, ``--nproc``) ``cuda`` means one GPU per rank: ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os

import torch

from mtlrec.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(spec: str | torch.device | None = "auto", *, where: str = "train.device") -> torch.device:
    """The :class:`torch.device` of a ``train.device`` value; a clear :class:`UserError` when it cannot be used."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"{where}: {spec!r} asked for, but this torch build sees no CUDA device; use 'cpu' or 'auto'"
            )
        if spec == "cuda":
            index = local_rank if "LOCAL_RANK" in os.environ else torch.cuda.current_device()
        else:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise UserError(f"{where}: expected 'cuda:N' with an integer N, got {spec!r}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UserError(f"{where}: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    raise UserError(f"{where}: expected one of {', '.join(DEVICE_CHOICES)}, got {spec!r}")


def set_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (faster, ~10-bit mantissa products); a no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


def move_batch(batch, device: torch.device):
    """``batch`` on ``device``. On CUDA each column is pinned (torch's caching host allocator recycles the pinned
    blocks) and copied with ``non_blocking=True``, so the copy overlaps the previous step's kernels."""
    if device.type == "cpu":
        return batch
    if device.type != "cuda":
        return batch.to(device)
    from mtlrec.data.batches import Batch

    def mv(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(device, non_blocking=True)

    return Batch(
        mv(batch.cat), mv(batch.num), {k: mv(v) for k, v in batch.multi.items()}, mv(batch.labels), mv(batch.masks)
    )


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class FiniteFlag:
    """Accumulates "every loss so far was finite" on the loss's device and reads it back only every ``every``
    steps on an accelerator (every step on CPU, where reading is free), so the per-step check never forces a GPU
    sync. ``bad(loss)`` returns True when a non-finite loss was seen since the last read-back; the step at which
    it is reported may then be up to ``every - 1`` steps after the bad one (:attr:`first_bad_step` says which)."""

    def __init__(self, every: int = 50, *, lazy: bool | None = None) -> None:
        self.every = max(1, int(every))
        self.lazy = lazy  # None: lazy on accelerators, immediate on CPU
        self._flag: torch.Tensor | None = None
        self._first: torch.Tensor | None = None
        self._n = 0
        self.first_bad_step: int | None = None

    def bad(self, loss: torch.Tensor, step: int, *, force: bool = False) -> bool:
        loss = loss.detach()
        if not (self.lazy if self.lazy is not None else loss.device.type != "cpu"):
            ok = bool(torch.isfinite(loss).all())
            if not ok:
                self.first_bad_step = step
            return not ok
        fin = torch.isfinite(loss).all()
        if self._flag is None:
            self._flag = torch.ones((), dtype=torch.bool, device=loss.device)
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
        # first bad step recorded on the device: where(still ok and now bad, step, first)
        self._first = torch.where(self._flag & ~fin, torch.full_like(self._first, step), self._first)
        self._flag &= fin
        self._n += 1
        if not force and self._n % self.every:
            return False
        return self.flush()

    def flush(self) -> bool:
        """Read the accumulated flag back now (one sync); True when a non-finite loss was seen."""
        if self._flag is None or bool(self._flag):
            return False
        self.first_bad_step = int(self._first)
        return True
