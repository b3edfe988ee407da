"""NFM's bi-interaction pooling (He & Chua, SIGIR'17; MODELS.md D.7)."""

from __future__ import annotations

import torch
from torch import nn


class BiInteraction(nn.Module):
    """``f_BI(V_x) = Σ_{i<j} v_i ⊙ v_j = ½[(Σ_i v_i)^2 − Σ_i v_i^2]`` (NFM eq. 4 in its linear-time form) over
    ``E (B, F, D)`` (rows already scaled by their feature values); output ``(B, D)``."""

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return 0.5 * (E.sum(1).pow(2) - E.pow(2).sum(1))
