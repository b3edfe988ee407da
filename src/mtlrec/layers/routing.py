"""Sparse routing blocks shared by SNR and MSSM: hard-concrete gates and routed sub-networks.

* :class:`HardConcreteGate` — a tensor of L0-regularisable gates ``z ∈ [0, 1]`` (Louizos, Welling & Kingma, ICLR'18,
  "Learning sparse neural networks through L0 regularization", eqs. 9-13): SNR's coding variables, MSSM's field masks.
* :class:`RoutedSubnetworks` — levels of sub-networks whose outputs reach the next level through those gates (SNR,
  Ma et al. AAAI'19; MSSM's cell-level sparse sharing).

Example::

    >>> import torch
    >>> gate = HardConcreteGate((2, 3))
    >>> gate.eval()(None).shape
    torch.Size([2, 3])
    >>> net = RoutedSubnetworks(8, num_subnets=[3], subnet_hidden=[[4]], num_outputs=2)
    >>> net(torch.randn(5, 8)).shape  # one routed input per receiver (task)
    torch.Size([2, 5, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers.experts import BatchedExperts


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates ``z ∈ [0, 1]^shape`` (Louizos et al. 2018, eqs. 9-13).

    ``forward(batch_size=None)`` returns ``z`` of ``shape`` (one sample for the batch) or ``(batch_size, *shape)``
    (one sample per example) in training mode, and the deterministic test-time gate ``ẑ`` of ``shape`` in eval mode.
    :meth:`expected_l0` is the closed-form ``Σ P(z > 0) = Σ σ(log α − β log(−γ/ζ))``.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        *,
        beta: float = 2.0 / 3.0,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_drop: float = 0.5,
        init_std: float = 1e-2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not (gamma < 0.0 < 1.0 < zeta):
            raise ValueError(f"hard-concrete stretch needs gamma < 0 and zeta > 1, got ({gamma}, {zeta})")
        if not 0.0 < init_drop < 1.0:
            raise ValueError(f"init_drop must be in (0, 1), got {init_drop}")
        if beta <= 0:
            raise ValueError(f"temperature beta must be positive, got {beta}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        mean = math.log(1.0 - init_drop) - math.log(init_drop)
        self.log_alpha = nn.Parameter(torch.randn(shape) * init_std + mean)
        self.beta, self.gamma, self.zeta, self.eps = beta, gamma, zeta, eps

    def _stretch(self, s: torch.Tensor) -> torch.Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def sample(self, batch_size: int | None = None) -> torch.Tensor:
        """A noisy gate sample (the training-mode gate)."""
        shape = self.log_alpha.shape if batch_size is None else (batch_size, *self.log_alpha.shape)
        u = torch.rand(shape, device=self.log_alpha.device).clamp(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / self.beta)
        return self._stretch(s)

    def deterministic(self) -> torch.Tensor:
        """The test-time gate ``ẑ = min(1, max(0, σ(log α)(ζ−γ) + γ))``."""
        return self._stretch(torch.sigmoid(self.log_alpha))

    def forward(self, batch_size: int | None = None) -> torch.Tensor:
        return self.sample(batch_size) if self.training else self.deterministic()

    def open_probability(self) -> torch.Tensor:
        """``P(z > 0) = σ(log α − β log(−γ/ζ))`` per gate."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def expected_l0(self) -> torch.Tensor:
        return self.open_probability().sum()


class RoutedSubnetworks(nn.Module):
    """Levels of sub-networks connected by hard-concrete coding variables (the SNR bottom).

    ``forward(x)`` with ``x (B, d)`` (every level-0 sub-network reads ``x``) or ``(n_0, B, d)`` (each its own input)
    returns ``(num_outputs, B, out_dim)``: the routed inputs of the ``num_outputs`` receivers after the last level.
    ``routing="trans"``: ``v_i = Σ_j z_ij W_ij u_j``; ``"aver"``: ``v_i = Σ_j z_ij u_j``. Every routing step is one
    ``einsum`` over all edges, never a loop over sub-networks.
    """

    def __init__(
        self,
        input_dim: int,
        num_subnets: Sequence[int],
        subnet_hidden: Sequence[Sequence[int] | int],
        num_outputs: int,
        *,
        routing: str = "trans",
        trans_dim: int | None = None,
        activation_name: str = "relu",
        dropout: float = 0.0,
        gate_sampling: str = "batch",
        gate_kw: dict | None = None,
    ) -> None:
        super().__init__()
        if routing not in ("trans", "aver"):
            raise ValueError(f"routing must be 'trans' or 'aver', got {routing!r}")
        if gate_sampling not in ("batch", "example"):
            raise ValueError(f"gate_sampling must be 'batch' or 'example', got {gate_sampling!r}")
        if len(num_subnets) != len(subnet_hidden) or not num_subnets:
            raise ValueError("num_subnets and subnet_hidden need one entry per level (at least one level)")
        hidden = [[h] if isinstance(h, int) else list(h) for h in subnet_hidden]
        self.routing, self.gate_sampling = routing, gate_sampling
        gate_kw = gate_kw or {}
        self.levels = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.transforms = nn.ParameterList()
        d_in = input_dim
        receivers = [*num_subnets[1:], num_outputs]
        for lvl, (n, h) in enumerate(zip(num_subnets, hidden, strict=True)):
            self.levels.append(BatchedExperts(n, d_in, h, activation_name=activation_name, dropout=dropout))
            d_out = h[-1]
            m = receivers[lvl]
            self.gates.append(HardConcreteGate((m, n), **gate_kw))
            if routing == "trans":
                d_next = trans_dim or d_out
                bound = 1.0 / math.sqrt(d_out)
                self.transforms.append(nn.Parameter(torch.empty(m, n, d_out, d_next).uniform_(-bound, bound)))
                d_out = d_next
            d_in = d_out
        self.out_dim = d_in

    def gate_values(self, batch_size: int) -> list[torch.Tensor]:
        per_example = self.training and self.gate_sampling == "example"
        return [g(batch_size if per_example else None) for g in self.gates]

    def route(self, lvl: int, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``u (n, B, h)`` → ``v (m, B, d)`` through gates ``z (m, n)`` or ``(B, m, n)``."""
        zs = "ij" if z.dim() == 2 else "bij"
        if self.routing == "aver":
            return torch.einsum(f"{zs},jbh->ibh", z, u)
        w = self.transforms[lvl]
        if z.dim() == 2:
            return torch.einsum("ij,jbh,ijhd->ibd", z, u, w)
        return torch.einsum("bij,jbh,ijhd->ibd", z, u, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zs = self.gate_values(x.shape[-2])
        h = x
        for lvl, (subnets, z) in enumerate(zip(self.levels, zs, strict=True)):
            h = self.route(lvl, z, subnets(h))
        return h

    def expected_l0(self) -> torch.Tensor:
        return sum((g.expected_l0() for g in self.gates), torch.zeros(()))
