"""Gates: softmax weights over experts. Every gate in mtlrec is a :class:`Gate`, so plug-ins (virtual gradient,
explain) find them by type."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers.mlp import MLP


class Gate(nn.Module):
    """``g(x) = softmax(W x)`` over ``num_outputs`` experts (MMoE eq. 5: linear by default).

    ``hidden`` adds an MLP before the linear layer (FuxiCTR-style, a deviation from the paper). The last output is
    kept in :attr:`last_weights` (detached) for inspection. ``forward`` returns ``(B, num_outputs)``.
    """

    def __init__(self, input_dim: int, num_outputs: int, *, hidden: Sequence[int] = (), temperature: float = 1.0):
        super().__init__()
        self.net = MLP(input_dim, hidden, output_dim=num_outputs)
        self.temperature = temperature
        self.last_weights: torch.Tensor | None = None
        self.weight_hooks: list = []  # callables (gate, weights) -> weights; identity in forward value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.net(x) / self.temperature, dim=-1)
        for hook in self.weight_hooks:
            w = hook(self, w)
        self.last_weights = w.detach()
        return w


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Weighted sum of expert outputs: ``weights (B, n)``, ``experts (n, B, h)`` → ``(B, h)``."""
    return torch.einsum("bn,nbh->bh", weights, experts)
