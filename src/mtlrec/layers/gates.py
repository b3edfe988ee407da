"""Gates: weights over experts. Every gate in mtlrec is a :class:`Gate` (input-dependent softmax, MMoE eq. 5) or a
:class:`ValueGate` (trainable values, DEPHN's TVG), so plug-ins (virtual gradient, explain) find them by type and
read their width from :attr:`Gate.num_outputs`.

Example::

    >>> import torch
    >>> Gate(6, 3)(torch.randn(4, 6)).shape
    torch.Size([4, 3])
    >>> ValueGate(5)().shape  # one row, broadcast over the batch
    torch.Size([1, 5])
"""

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
        self.num_outputs = num_outputs
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


def mix_each(weights: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """:func:`mix` of expert outputs given as a list of ``n`` ``(B, h)`` tensors
    (:meth:`~mtlrec.layers.experts.BatchedExperts.each`): ``Σ_i weights[:, i] · experts[i]``."""
    out = weights[:, 0:1] * experts[0]
    for i in range(1, len(experts)):
        out = out + weights[:, i : i + 1] * experts[i]
    return out


class ValueGate(Gate):
    """Trainable value gating (TVG, DEPHN §III-C / Fig. 6): the gate values are parameters, not functions of x.

    ``parametrization`` [A]: ``sigmoid`` (default, ``G = σ(θ)``, θ = 0 so G = 0.5; then ``|G^t − G^j| ∈ [0, 1)``
    as Fig. 4 assumes), ``raw`` (unconstrained, init ``1/n``) or ``softmax`` (over the n entries; ΔG stays tiny, so
    VG barely depends on it). ``forward(x)`` returns ``(1, n)`` (broadcast over the batch); weight hooks apply.
    """

    def __init__(self, num_outputs: int, *, parametrization: str = "sigmoid") -> None:
        nn.Module.__init__(self)
        if parametrization not in ("sigmoid", "raw", "softmax"):
            raise ValueError(f"TVG parametrization must be sigmoid, raw or softmax, got {parametrization!r}")
        self.num_outputs = num_outputs
        self.parametrization = parametrization
        init = 1.0 / num_outputs if parametrization == "raw" else 0.0
        self.theta = nn.Parameter(torch.full((num_outputs,), init))
        self.temperature = 1.0
        self.last_weights: torch.Tensor | None = None
        self.weight_hooks: list = []

    def values(self) -> torch.Tensor:
        if self.parametrization == "sigmoid":
            return torch.sigmoid(self.theta)
        if self.parametrization == "softmax":
            return torch.softmax(self.theta, 0)
        return self.theta

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        w = self.values().unsqueeze(0)
        for hook in self.weight_hooks:
            w = hook(self, w)
        self.last_weights = w.detach()
        return w
