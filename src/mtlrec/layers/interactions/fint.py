"""FINT: field-aware interaction layers (Zhao et al., arXiv 2107.01999; MODELS.md D.4)."""

from __future__ import annotations

import math

import torch
from torch import nn


class FINT(nn.Module):
    """Field-aware interaction layers over ``E (B, F, D)``; output ``(B, F, D)``.

    Layer ``l`` (FINT eq. 3-4, matrix form): ``V^l = V^{l-1} ⊙ (W^{l-1} V^0) + U^{l-1} ⊙ V^{l-1}``, where
    ``W^l ∈ R^{F×F}`` mixes fields channel-wise (``(W V^0)_i = Σ_j w_ij v_j^0``) and ``U^l ∈ R^F`` is a per-field
    residual scale broadcast over the embedding dimension. [A] ``W`` is Xavier-initialised (the GDCN-repo port uses
    ``randn``) and ``U`` is initialised to 1 (as in that port). With ``W = 0`` and ``U = 1`` every layer is the
    identity.
    """

    def __init__(self, num_fields: int, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.num_fields = num_fields
        self.dim = dim
        self.num_layers = num_layers
        self.out_dim = num_fields * dim
        std = math.sqrt(2.0 / (2 * num_fields))
        self.W = nn.Parameter(torch.randn(num_layers, num_fields, num_fields) * std)
        self.U = nn.Parameter(torch.ones(num_layers, num_fields))

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        v = E
        for layer in range(self.num_layers):
            pooled = torch.einsum("ij,bjd->bid", self.W[layer], E)
            v = v * pooled + self.U[layer].unsqueeze(-1) * v
        return v
