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

from mtlrec.layers.aligned import capturing_graph
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


class _Mix(torch.autograd.Function):
    """``einsum("bn,nbh->bh")`` whose backward forms ``∂L/∂experts`` as the broadcast product ``w_bn · g_bh``.

    Autograd's einsum backward computes that gradient as ``B`` rank-1 matrix products ``(n, 1) @ (1, h)`` over a
    strided view, about 1 GFLOP/s; each element is the single product ``w · g`` either way, so the values are the
    same bits. ``∂L/∂weights`` is autograd's own einsum.
    """

    @staticmethod
    def forward(ctx, weights, experts):  # noqa: ANN001, ANN205 - autograd.Function signature
        ctx.save_for_backward(weights, experts)
        return torch.einsum("bn,nbh->bh", weights, experts)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weights, experts = ctx.saved_tensors
        need_w, need_e = ctx.needs_input_grad
        grad_w = torch.einsum("bh,nbh->bn", grad, experts) if need_w else None
        grad_e = weights.t().unsqueeze(-1) * grad.unsqueeze(0) if need_e else None
        return grad_w, grad_e


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Weighted sum of expert outputs: ``weights (B, n)``, ``experts (n, B, h)`` → ``(B, h)``."""
    plain = (
        experts.shape[0] == 1  # einsum then multiplies elementwise, no rank-1 products to avoid
        or weights.dtype != experts.dtype
        or torch.is_autocast_enabled(experts.device.type)
        or capturing_graph()
    )
    if plain:  # autocast's casts and export graphs as they were
        return torch.einsum("bn,nbh->bh", weights, experts)
    return _Mix.apply(weights, experts)


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
