"""Gated cross network of GDCN (Wang et al., CIKM'23, arXiv 2311.04635; MODELS.md D.1)."""

from __future__ import annotations

import torch
from torch import nn


class GatedCrossNetwork(nn.Module):
    """Stack of gated cross layers over ``x0 (B, d)``; output ``(B, d)``.

    Layer ``l`` (GDCN eq. 1): ``c_{l+1} = c_0 ⊙ (W_c c_l + b_l) ⊙ σ(W_g c_l) + c_l`` with ``W_c, W_g ∈ R^{d×d}``
    without bias. The information gate ``σ(W_g c_l) ∈ (0, 1)`` is kept (detached) in :attr:`last_gates`; with
    ``σ ≡ 1`` the layer is CrossNetV2. Initialisation follows the official code: Xavier-uniform ``W_c, W_g`` and
    [A] ``b_l ~ U(0, 1)`` (as in ``anonctr/GDCN`` and FuxiCTR).
    """

    def __init__(self, input_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.input_dim = self.out_dim = input_dim
        self.w_cross = nn.ModuleList(nn.Linear(input_dim, input_dim, bias=False) for _ in range(num_layers))
        self.w_gate = nn.ModuleList(nn.Linear(input_dim, input_dim, bias=False) for _ in range(num_layers))
        for lin in (*self.w_cross, *self.w_gate):
            nn.init.xavier_uniform_(lin.weight)
        self.bias = nn.Parameter(torch.rand(num_layers, input_dim))
        self.last_gates: list[torch.Tensor] = []

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x, gates = x0, []
        for layer, (wc, wg) in enumerate(zip(self.w_cross, self.w_gate, strict=True)):
            g = torch.sigmoid(wg(x))
            gates.append(g.detach())
            x = x0 * (wc(x) + self.bias[layer]) * g + x
        self.last_gates = gates
        return x
