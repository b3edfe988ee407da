"""Cross networks of DCN and DCN-V2 (MODELS.md D.5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtlrec.layers import aligned


class CrossNetwork(nn.Module):
    """Explicit bounded-degree feature crossing over ``x0 (B, d)``; output ``(B, d)``.

    * ``variant="v1"`` (DCN, Wang et al. ADKDD'17, eq. 3): ``x_{l+1} = x0 (x_l^T w_l) + b_l + x_l`` with
      ``w_l, b_l ∈ R^d``.
    * ``variant="v2"`` full rank (DCN-V2, Wang et al. WWW'21, eq. 1): ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``
      with ``W_l ∈ R^{d×d}``.
    * ``variant="v2", low_rank=r, num_experts=1`` (DCN-V2 eq. 2): ``W_l = U_l V_l^T`` with ``U_l, V_l ∈ R^{d×r}``,
      i.e. ``x_{l+1} = x0 ⊙ (U_l V_l^T x_l + b_l) + x_l``; ``2·d·r + d`` parameters per layer.
    * ``variant="v2", low_rank=r, num_experts=E>1`` (DCN-V2 eq. 3, "DCN-Mix"):
      ``x_{l+1} = Σ_i G_i(x_l) · x0 ⊙ (U_i tanh(C_i tanh(V_i^T x_l)) + b_l) + x_l`` with
      ``G(x_l) = softmax(W_g x_l)``, ``U_i, V_i ∈ R^{d×r}``, ``C_i ∈ R^{r×r}``. [A] the bias ``b_l`` is shared by
      the experts (as in FuxiCTR) and the gate is linear without bias; experts are evaluated together (einsum),
      never in a Python loop.

    Initialisation [A]: Xavier-normal weights, zero biases (as in the DCN-V2 reference code).
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 3,
        variant: str = "v1",
        low_rank: int | None = None,
        num_experts: int = 1,
    ) -> None:
        super().__init__()
        if variant not in ("v1", "v2"):
            raise ValueError(f"variant must be 'v1' or 'v2', got {variant!r}")
        if variant == "v1" and (low_rank is not None or num_experts != 1):
            raise ValueError("low_rank / num_experts apply to variant='v2' only")
        if num_experts < 1 or (num_experts > 1 and low_rank is None):
            raise ValueError("a mixture of experts (num_experts > 1) needs low_rank")
        self.input_dim = input_dim
        self.num_layers = num_layers
        self.variant = variant
        self.low_rank = low_rank
        self.num_experts = num_experts
        self.out_dim = input_dim
        d, n, e = input_dim, num_layers, num_experts
        self.bias = nn.Parameter(torch.zeros(n, d))
        if variant == "v1":
            self.w = nn.Parameter(_xavier(torch.empty(n, d), d, 1))
        elif low_rank is None:
            self.W = nn.Parameter(_xavier(torch.empty(n, d, d), d, d))
        else:
            r = low_rank
            self.U = nn.Parameter(_xavier(torch.empty(n, e, d, r), d, r))
            self.V = nn.Parameter(_xavier(torch.empty(n, e, d, r), d, r))
            if e > 1:
                self.C = nn.Parameter(_xavier(torch.empty(n, e, r, r), r, r))
                self.gates = nn.ModuleList(nn.Linear(d, e, bias=False) for _ in range(n))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        # each layer's parameters as unbind views: unbind's backward stacks the layers' gradients once, where
        # indexing the stacked parameters zero-fills a gradient of the full stack for every layer
        per_layer = {name: p.unbind(0) for name, p in self.named_parameters(recurse=False)}
        x = x0
        for layer in range(self.num_layers):
            x = self._layer(layer, {name: p[layer] for name, p in per_layer.items()}, x0, x)
        return x

    def _layer(self, layer: int, p: dict[str, torch.Tensor], x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b = p["bias"]
        if self.variant == "v1":
            return x0 * (x @ p["w"]).unsqueeze(-1) + b + x
        if self.low_rank is None:
            return x0 * (aligned.matmul(x, p["W"].T) + b) + x
        U, V = p["U"], p["V"]
        if self.num_experts == 1:
            return x0 * ((x @ V[0]) @ U[0].T + b) + x
        z = torch.tanh(torch.einsum("bd,edr->ber", x, V))
        z = torch.tanh(torch.einsum("ber,ers->bes", z, p["C"]))
        experts = x0.unsqueeze(1) * (torch.einsum("bes,eds->bed", z, U) + b)  # (B, E, d)
        g = torch.softmax(self.gates[layer](x), dim=-1)  # (B, E)
        return torch.einsum("be,bed->bd", g, experts) + x


def _xavier(t: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    return t.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
