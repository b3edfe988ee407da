"""MaskNet: instance-guided masks and MaskBlocks (Wang, She, Zhang, DLP-KDD'21, arXiv 2102.07619; MODELS.md D.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.layers.mlp import MLP


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class FieldLayerNorm(nn.Module):
    """``LN_EMB(V_emb) = concat(LN(e_1), …, LN(e_f))`` (MaskNet eq. 9): layer norm within each field's
    embedding, with a gain and bias per field ([A] per-field affine parameters). ``(B, F, D)`` → ``(B, F, D)``."""

    def __init__(self, num_fields: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(num_fields, dim))
        self.bias = nn.Parameter(torch.zeros(num_fields, dim))
        self.eps = eps

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(E, E.shape[-1:], eps=self.eps) * self.gain + self.bias


class MaskBlock(nn.Module):
    """``num_parallel`` MaskBlocks with stacked weights, evaluated together (no loop over blocks).

    Instance-guided mask (eq. 5): ``V_mask = W_d2 ReLU(W_d1 V_emb + β_d1) + β_d2`` with the aggregation width
    ``t = reduction_ratio · z`` (``z = input_dim``, the width of the masked vector). Block (eqs. 11-14):
    ``V_output = ReLU(LN(W_i (V_mask ⊙ V_in)))`` with ``W_i`` without bias (FuxiCTR) and LN before the
    nonlinearity (``layer_norm=False`` drops it).

    ``forward(v_emb (B, m), v_in)`` where ``v_in`` is ``(B, z)`` (shared by all blocks) or ``(n, B, z)``;
    returns ``(B, output_dim)`` when ``num_parallel == 1`` and ``v_in`` is 2-D, else ``(n, B, output_dim)``.
    """

    def __init__(
        self,
        mask_input_dim: int,
        input_dim: int,
        output_dim: int,
        *,
        reduction_ratio: float = 2.0,
        num_parallel: int = 1,
        layer_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n, m, z, q = num_parallel, mask_input_dim, input_dim, output_dim
        t = max(1, int(round(reduction_ratio * z)))
        self.num_parallel, self.output_dim = n, q
        self.w1, self.b1 = _uniform(n, m, t, fan_in=m), _uniform(n, 1, t, fan_in=m)
        self.w2, self.b2 = _uniform(n, t, z, fan_in=t), _uniform(n, 1, z, fan_in=t)
        self.w_i = _uniform(n, z, q, fan_in=z)
        self.ln_gain = nn.Parameter(torch.ones(n, 1, q)) if layer_norm else None
        self.ln_bias = nn.Parameter(torch.zeros(n, 1, q)) if layer_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def mask(self, v_emb: torch.Tensor) -> torch.Tensor:
        """Instance-guided masks ``(n, B, z)`` from ``V_emb (B, m)`` (eq. 5)."""
        h = torch.relu(torch.einsum("bm,nmt->nbt", v_emb, self.w1) + self.b1)
        return torch.baddbmm(self.b2, h, self.w2)

    def forward(self, v_emb: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        squeeze = self.num_parallel == 1 and v_in.dim() == 2
        masked = self.mask(v_emb) * v_in  # (n, B, z)
        h = torch.bmm(masked, self.w_i)
        if self.ln_gain is not None:
            h = F.layer_norm(h, h.shape[-1:]) * self.ln_gain + self.ln_bias
        h = self.dropout(torch.relu(h))
        return h[0] if squeeze else h


class MaskNet(nn.Module):
    """SerMaskNet / ParaMaskNet over ``E (B, F, D)``; output ``(B, out_dim)``.

    * ``mode="serial"``: the first MaskBlock masks ``LN_EMB(V_emb)`` (eq. 11), each next block masks the previous
      block's output (eq. 13); the last block's output is the representation.
    * ``mode="parallel"``: ``num_blocks`` MaskBlocks on ``LN_EMB(V_emb)`` → ``V_merge = concat(...)`` → MLP
      ``hidden`` (ReLU), the paper's ``H_l = ReLU(W_l H_{l-1} + β_l)``.

    The mask input is always the raw ``V_emb`` and every block has its own mask parameters. ``hidden`` (an MLP
    after the blocks) also applies in serial mode when given. ``emb_layer_norm`` toggles eq. 9.
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        mode: str = "serial",
        num_blocks: int = 3,
        block_dim: int = 64,
        reduction_ratio: float = 2.0,
        *,
        hidden: Sequence[int] = (),
        layer_norm: bool = True,
        emb_layer_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("serial", "parallel"):
            raise ValueError(f"mode must be 'serial' or 'parallel', got {mode!r}")
        if num_blocks < 1:
            raise ValueError("MaskNet needs at least one MaskBlock")
        self.mode = mode
        m = num_fields * dim
        self.emb_norm = FieldLayerNorm(num_fields, dim) if emb_layer_norm else None
        kw = {"reduction_ratio": reduction_ratio, "layer_norm": layer_norm, "dropout": dropout}
        if mode == "serial":
            dims = [m] + [block_dim] * num_blocks
            self.blocks = nn.ModuleList(MaskBlock(m, a, b, **kw) for a, b in zip(dims[:-1], dims[1:], strict=True))
            merged = block_dim
        else:
            self.blocks = nn.ModuleList([MaskBlock(m, m, block_dim, num_parallel=num_blocks, **kw)])
            merged = num_blocks * block_dim
        self.mlp = MLP(merged, hidden, dropout=dropout)
        self.out_dim = self.mlp.output_dim

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        v_emb = E.flatten(1)
        h = (self.emb_norm(E) if self.emb_norm is not None else E).flatten(1)
        if self.mode == "serial":
            for block in self.blocks:
                h = block(v_emb, h)
        else:
            h = self.blocks[0](v_emb, h.unsqueeze(0)).transpose(0, 1).flatten(1)  # (B, u·q)
        return self.mlp(h)
