"""Helpers for code that runs both in fp32 and inside an autocast region (bf16 on CPU, bf16/fp16 on CUDA).

Outside autocast every helper is the identity on what plain fp32 code computes (the same kernels, the same bits).
"""

from __future__ import annotations

import torch


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The low-precision dtype of the autocast region active on ``device_type``, or None outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def to_autocast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype when an autocast region is active on its device, else ``x``. A backbone whose
    input feeds only matrix products (gates, experts) casts it once here instead of autocast casting it again
    for every product that reads it (and casting each product's input gradient back in the backward pass)."""
    low = autocast_dtype(x.device.type)
    return x if low is None or not x.is_floating_point() else x.to(low)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``softmax(x, dim)`` computed in fp32 and returned in ``x``'s dtype. For an fp32 ``x`` this is
    ``torch.softmax`` itself; for bf16 scores (autocast products) it is more exact and on the measured CPUs 3x
    faster than the bf16 kernel (attention scores ``(2048, 2, 26, 26)``: 10 vs 31 ms forward + backward)."""
    return torch.softmax(x, dim, dtype=torch.float32).to(x.dtype)
