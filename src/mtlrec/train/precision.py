"""Numeric precision of training and inference: ``fp32``; ``bf16`` autocast on CPU (where the CPU computes bf16
natively) and CUDA; ``fp16`` autocast with a gradient scaler, on CUDA only."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from mtlrec.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
# flags worth recording beside a benchmark figure (the fp32/bf16 GEMM paths they enable differ a lot in speed)
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
)


def cpu_flags() -> list[str]:
    """The CPU flags (from ``/proc/cpuinfo``) among :data:`INTERESTING_FLAGS`; empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in INTERESTING_FLAGS if f in have]
    return []


def bf16_supported() -> bool:
    """True when the CPU has native bf16 arithmetic (avx512_bf16 or AMX), the condition for offering bf16."""
    return bool(set(cpu_flags()) & {"avx512_bf16", "amx_bf16"})


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def check_precision(precision: str, device: torch.device | str | None = None) -> str:
    """Validate ``precision`` for ``device`` (default CPU): fp16 needs CUDA; bf16 on a CPU that would only
    emulate it warns (slower than fp32); bf16 on a GPU without bf16 support is an error."""
    if precision not in PRECISIONS:
        raise UserError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = _device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise UserError(
            f"train.precision: 'fp16' (autocast with a gradient scaler) needs a CUDA device, this run is on {kind!r}; "
            "use 'bf16' or 'fp32' there"
        )
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: 'bf16' but this GPU has no bf16 support; use 'fp16' or 'fp32'")
    if precision == "bf16" and kind == "cpu" and not bf16_supported():
        warnings.warn(
            "precision 'bf16': this CPU has neither avx512_bf16 nor AMX, so bf16 is emulated and usually slower "
            "than fp32; use precision 'fp32' here",
            RuntimeWarning,
            stacklevel=2,
        )
    return precision


def autocast(precision: str, device: torch.device | str | None = None) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (default CPU; a no-op for fp32)."""
    kind = _device_type(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    if precision == "fp16":
        check_precision(precision, device)
        return torch.autocast(kind, dtype=torch.float16)
    raise UserError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")


def grad_scaler(precision: str, device: torch.device | str | None = None) -> torch.amp.GradScaler | None:
    """A :class:`torch.amp.GradScaler` for fp16 training on CUDA; None for every other precision."""
    if precision != "fp16":
        return None
    check_precision(precision, device)
    return torch.amp.GradScaler("cuda")
