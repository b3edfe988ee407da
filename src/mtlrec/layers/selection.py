"""Soft selection gating (SSG, DEPHN eq. 1): per interaction structure, a trainable mix of the raw field embeddings
and one shared self-attention over them. Used by PHN, MT-PHN and DEPHN.

Example::

    >>> import torch
    >>> ssg = SoftSelectionGating(num_fields=4, dim=8)
    >>> [e.shape for e in ssg(torch.randn(2, 4, 8))]  # one (B, F, D) per structure: cross, fint, dnn
    [torch.Size([2, 4, 8]), torch.Size([2, 4, 8]), torch.Size([2, 4, 8])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers.interactions.attention import FieldSelfAttention

STRUCTURES = ("cross", "fint", "dnn")


class SoftSelectionGating(nn.Module):
    """SSG, DEPHN eq. (1): ``E_sg^m = G^m ⊙ E_SA + (1 − G^m) ⊙ E`` for each interaction structure ``m``.

    ``E_SA = W_O ReLU([head_1 ‖ … ‖ head_h]) + E`` is one multi-head self-attention over the fields, shared by all
    structures (A.3.1 [A]: AutoInt attention without its own residual, ``num_heads=2`` heads of width D, scores
    scaled by 1/√D, ``W_O`` back to D, residual ``+E``; the spec's order "W_O, then ReLU" is swapped because the
    attention module ends in its ReLU). Each structure has its own trainable ``G^m ∈ R^{F×D}`` ([A] shape).
    ``parametrization`` [A]: ``sigmoid`` (default, ``G = σ(θ)``, θ = 0 so G = 0.5) or ``clamp`` (raw G initialised
    to 0.5, clamped to [0, 1] in the forward). ``forward(E (B, F, D))`` returns one ``(B, F, D)`` per structure.
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        structures: Sequence[str] = STRUCTURES,
        *,
        parametrization: str = "sigmoid",
        num_heads: int = 2,
    ) -> None:
        super().__init__()
        if parametrization not in ("sigmoid", "clamp"):
            raise ValueError(f"SSG parametrization must be 'sigmoid' or 'clamp', got {parametrization!r}")
        self.structures = list(structures)
        self.parametrization = parametrization
        self.attention = FieldSelfAttention(
            dim, num_heads=num_heads, num_layers=1, head_dim=dim, residual=False, scale=True
        )
        self.project = nn.Linear(self.attention.out_dim, dim, bias=False)
        init = 0.0 if parametrization == "sigmoid" else 0.5
        self.theta = nn.Parameter(torch.full((len(self.structures), num_fields, dim), init))

    def gate_values(self) -> torch.Tensor:
        """``G`` of every structure, ``(M, F, D)`` in [0, 1]."""
        return torch.sigmoid(self.theta) if self.parametrization == "sigmoid" else self.theta.clamp(0.0, 1.0)

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        e_sa = self.project(self.attention(e)) + e
        g = self.gate_values()
        return [e + g[m] * (e_sa - e) for m in range(len(self.structures))]


class _PlainFields(nn.Module):
    """``use_ssg=False`` (ablation): every structure sees the raw embeddings."""

    def __init__(self, structures: Sequence[str]) -> None:
        super().__init__()
        self.structures = list(structures)

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        return [e] * len(self.structures)


def make_ssg(use_ssg: bool, num_fields: int, dim: int, parametrization: str, num_heads: int) -> nn.Module:
    if use_ssg:
        return SoftSelectionGating(num_fields, dim, parametrization=parametrization, num_heads=num_heads)
    return _PlainFields(STRUCTURES)
