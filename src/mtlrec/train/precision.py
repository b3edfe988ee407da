"""Numeric precision of training and inference: fp32, or bf16 CPU autocast where the CPU computes bf16 natively."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
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


def check_precision(precision: str) -> str:
    """Validate ``precision``; warn when bf16 is asked for on a CPU that would only emulate it (slower than fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not bf16_supported():
        warnings.warn(
            "precision 'bf16': this CPU has neither avx512_bf16 nor AMX, so bf16 is emulated and usually slower "
            "than fp32; use precision 'fp32' here",
            RuntimeWarning,
            stacklevel=2,
        )
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
