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


class _MixGroups(torch.autograd.Function):
    """:func:`mix_groups` with the outputs written into one ``(R, B, h)`` tensor and ``∂L/∂experts`` formed in one
    ``(n, B, h)`` buffer: autograd's version of the same sums concatenates one gradient per expert slice and adds
    one per reading branch (three copies of the level's ``(n, B, h)`` block per PLE level), and its ``n = 1`` mixes
    go through einsum's broadcast products over ``(B, h, 1)`` views."""

    @staticmethod
    def forward(ctx, experts, groups, *weights):  # noqa: ANN001, ANN205 - autograd.Function signature
        out = experts.new_empty(len(groups), *experts.shape[1:])
        for r, (idx, w) in enumerate(zip(groups, weights, strict=True)):
            torch.mul(experts[idx[0]], w[:, :1], out=out[r])
            for j in range(1, len(idx)):
                out[r].addcmul_(experts[idx[j]], w[:, j : j + 1])
        ctx.groups = groups
        ctx.save_for_backward(experts, *weights)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        experts, *weights = ctx.saved_tensors
        grad_e = torch.empty_like(experts, memory_format=torch.contiguous_format) if ctx.needs_input_grad[0] else None
        written: set[int] = set()  # an expert's first gradient term is written, the others added: no zero fill
        grad_w = []
        for r, (idx, w) in enumerate(zip(ctx.groups, weights, strict=True)):
            if grad_e is not None:
                for j, i in enumerate(idx):
                    if i in written:
                        grad_e[i].addcmul_(grad[r], w[:, j : j + 1])
                    else:
                        torch.mul(grad[r], w[:, j : j + 1], out=grad_e[i])
                        written.add(i)
            if ctx.needs_input_grad[2 + r]:
                gw = torch.stack([torch.linalg.vecdot(grad[r], experts[i]) for i in idx], 1)
                broadcast = w.shape[0] == 1 and gw.shape[0] > 1  # one weight row for the whole batch
                grad_w.append(gw.sum(0, keepdim=True) if broadcast else gw)
            else:
                grad_w.append(None)
        if grad_e is not None:
            for i in set(range(len(grad_e))) - written:  # an expert no gate reads
                grad_e[i].zero_()
        return grad_e, None, *grad_w


def mix_groups(weights: Sequence[torch.Tensor], experts: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Several :func:`mix` of subsets of one expert block at once: output ``r`` is
    ``Σ_j weights[r][:, j] · experts[groups[r][j]]``, for ``weights[r]`` of shape ``(B or 1, len(groups[r]))`` and
    ``experts (n, B, h)``; returns ``(len(groups), B, h)``, i.e. the branches stacked as the next layer of experts
    reads them. PLE's extraction levels: each task gate mixes its own and the shared experts, the shared gate all.

    Example::

        >>> e = torch.randn(3, 4, 2)  # experts: task 0, task 1, shared
        >>> w = [torch.softmax(torch.randn(4, 2), -1), torch.softmax(torch.randn(4, 3), -1)]
        >>> out = mix_groups(w, e, [(0, 2), (0, 1, 2)])
        >>> torch.allclose(out[1], mix(w[1], e))
        True
    """
    groups = tuple(tuple(g) for g in groups)
    autocasting = torch.is_autocast_enabled(experts.device.type)
    mixed_dtypes = any(w.dtype != experts.dtype for w in weights)
    if capturing_graph() or (mixed_dtypes and not autocasting):
        return torch.stack([mix(w, experts[list(idx)]) for w, idx in zip(weights, groups, strict=True)])
    # under autocast the weights are cast as autocast casts einsum's operands
    return _MixGroups.apply(experts, groups, *(w.to(experts.dtype) for w in weights))


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
