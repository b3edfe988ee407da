"""Seeding, importable from every layer (it imports nothing of mtlrec).

``seed_everything(seed)`` seeds Python's ``random``, NumPy's global generator and torch (CPU and every CUDA
device), which is what makes two runs of the same config with the same seed produce identical models.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy.random`` and ``torch`` (``torch.manual_seed`` also seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
