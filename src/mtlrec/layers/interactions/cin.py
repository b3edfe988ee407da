"""Compressed Interaction Network of xDeepFM (Lian et al., KDD'18; MODELS.md D.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers.mlp import activation


class CIN(nn.Module):
    """CIN over ``E (B, m, D)``; output the sum-pooled feature maps ``p^+ (B, out_dim)``.

    Layer ``k`` (xDeepFM eq. 6): ``X^k_{h,*} = Σ_i Σ_j W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})``: the outer product of
    the previous maps and the fields per embedding dimension, compressed by ``H_k`` 1×1 filters (one matrix
    product). Each layer's output maps are sum-pooled over ``D`` (eq. 7) and concatenated.

    ``split_half=True`` (the paper's default): every layer but the last sends half of its maps to the output and
    half to the next layer (so those sizes must be even); ``False`` sends all maps both ways (FuxiCTR "direct").
    [A] ``activation`` after each layer defaults to ``"none"`` (identity, as in the paper's linear CIN); filters
    have a bias.
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        layer_sizes: Sequence[int] = (128, 128),
        split_half: bool = True,
        activation_name: str = "none",
    ) -> None:
        super().__init__()
        sizes = list(layer_sizes)
        if not sizes:
            raise ValueError("CIN needs at least one layer")
        if split_half and any(h % 2 for h in sizes[:-1]):
            raise ValueError(f"split_half needs even layer sizes except the last, got {sizes}")
        self.num_fields, self.split_half = num_fields, split_half
        self.filters = nn.ModuleList()
        prev, out_dim = num_fields, 0
        for k, h in enumerate(sizes):
            self.filters.append(nn.Linear(prev * num_fields, h))
            last = k == len(sizes) - 1
            nxt = h // 2 if split_half and not last else h
            out_dim += h - nxt if split_half and not last else h
            prev = nxt
        self.out_dim = out_dim
        self.act = activation(activation_name)

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        b, m, d = E.shape
        x, pooled = E, []
        for k, lin in enumerate(self.filters):
            z = torch.einsum("bhd,bmd->bhmd", x, E).reshape(b, -1, d)  # (B, H_{k-1}·m, D)
            z = self.act(lin(z.transpose(1, 2)).transpose(1, 2))  # (B, H_k, D)
            if self.split_half and k < len(self.filters) - 1:
                x, out = z.split(z.shape[1] // 2, dim=1)
            else:
                x, out = z, z
            pooled.append(out.sum(-1))
        return torch.cat(pooled, 1)
