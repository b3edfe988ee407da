"""``n`` copies of an interaction module with separate parameters, evaluated together as batched products.

DTN runs the same three feature-interaction modules (GDCN, MaskNet, MemoNet) in every task-specific and shared
branch, each with its own parameters, on the same input. Evaluated one branch and one module at a time that is
dozens of small matrix products and, for MemoNet, one hashed-codebook lookup and one sparse gradient per branch.
The classes here hold the ``n`` copies' parameters stacked on a leading branch axis and compute all branches with
one ``bmm``/``baddbmm`` per layer (GDCN's cross and gate weights of a layer are one product), one codebook lookup
(the branches' codebooks are row blocks of one table, addressed by one shared set of hash buckets) and one sparse
gradient. Each is built ``from_modules`` of the per-branch modules, so its initialisation is exactly theirs, and
computes the same function up to float rounding (``tests/test_stacked_interactions.py`` compares outputs and
gradients with the per-branch modules).

Every ``forward`` returns ``(n, B, out_dim)``: branch ``k``'s output in row ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers.interactions.gdcn import GatedCrossNetwork
from mtlrec.layers.interactions.masknet import MaskBlock, MaskNet
from mtlrec.layers.interactions.memonet import HashCodebook


def _stack(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone())


def _shared(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, d)`` seen by every branch as ``(n, B, d)`` (a view; ``(n, B, d)`` passes through)."""
    return x.expand(n, *x.shape) if x.dim() == 2 else x


class StackedLinear(nn.Module):
    """``n`` independent linear maps ``d_in → d_out``: ``forward(x (n, B, d_in) or (B, d_in))`` → ``(n, B, d_out)``.

    ``weight`` is ``(n, d_in, d_out)`` (the transposes of the ``nn.Linear`` weights), ``bias`` ``(n, 1, d_out)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_modules(cls, linears: Sequence[nn.Linear]) -> StackedLinear:
        bias = _stack([lin.bias for lin in linears]).data.unsqueeze(1) if linears[0].bias is not None else None
        return cls(_stack([lin.weight.t() for lin in linears]).data, bias)

    @property
    def num_branches(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _shared(x, self.num_branches)
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)


class StackedMLP(nn.Sequential):
    """``n`` copies of an :class:`~mtlrec.layers.mlp.MLP` of Linear / activation layers (no batch norm, no dropout:
    what DTN's MaskNet uses); ``(n, B, d)`` → ``(n, B, d_out)``."""

    @classmethod
    def from_modules(cls, mlps: Sequence[nn.Sequential]) -> StackedMLP:
        layers: list[nn.Module] = []
        for parts in zip(*mlps, strict=True):
            if isinstance(parts[0], nn.Linear):
                layers.append(StackedLinear.from_modules(parts))
            elif isinstance(parts[0], nn.ReLU | nn.Identity):
                layers.append(parts[0])
            else:
                raise ValueError(f"StackedMLP cannot stack {type(parts[0]).__name__} layers")
        return cls(*layers)


class StackedGatedCross(nn.Module):
    """``n`` :class:`GatedCrossNetwork` s on the same ``x0 (B, d)``; layer ``l`` of every branch is one ``bmm`` of
    ``c_l`` with ``[W_c^T ; W_g^T]`` (GDCN eq. 1: ``c_{l+1} = c_0 ⊙ (W_c c_l + b_l) ⊙ σ(W_g c_l) + c_l``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (L, n, d, 2d)
        self.bias = nn.Parameter(bias)  # (L, n, 1, d)

    @classmethod
    def from_modules(cls, nets: Sequence[GatedCrossNetwork]) -> StackedGatedCross:
        layers = len(nets[0].w_cross)
        weight = torch.stack(
            [
                torch.stack([torch.cat([net.w_cross[ell].weight.t(), net.w_gate[ell].weight.t()], 1) for net in nets])
                for ell in range(layers)
            ]
        )
        bias = torch.stack([torch.stack([net.bias[ell] for net in nets]) for ell in range(layers)]).unsqueeze(2)
        return cls(weight.detach().clone(), bias.detach().clone())

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        d = x0.shape[-1]
        x = _shared(x0, self.weight.shape[1])
        for w, b in zip(self.weight, self.bias, strict=True):
            cross, gate = torch.bmm(x, w).split(d, -1)
            x = x0 * (cross + b) * torch.sigmoid(gate) + x
        return x


class StackedParallelMaskNet(nn.Module):
    """``n`` parallel-mode :class:`MaskNet` s (without the field layer norm) on the same ``E (B, F, D)``: every
    branch's MaskBlocks are blocks of one :class:`MaskBlock` (``n · blocks`` in parallel), then ``n`` stacked MLPs."""

    def __init__(self, block: MaskBlock, mlp: StackedMLP, num_branches: int) -> None:
        super().__init__()
        self.block, self.mlp, self.num_branches = block, mlp, num_branches

    @classmethod
    def from_modules(cls, nets: Sequence[MaskNet]) -> StackedParallelMaskNet:
        if any(net.mode != "parallel" or net.emb_norm is not None for net in nets):
            raise ValueError("only parallel MaskNets without the embedding layer norm are stacked")
        blocks = [net.blocks[0] for net in nets]
        n_par = sum(b.num_parallel for b in blocks)
        ref = blocks[0]
        m, t = ref.w1.shape[1], ref.w1.shape[2]
        z, q = ref.w_i.shape[1], ref.w_i.shape[2]
        block = MaskBlock(m, z, q, reduction_ratio=t / z, num_parallel=n_par, layer_norm=ref.ln_gain is not None)
        if block.w1.shape != (n_par, m, t):
            raise ValueError("MaskBlock widths do not stack")
        with torch.no_grad():
            for name, p in block.named_parameters():
                p.copy_(torch.cat([getattr(b, name) for b in blocks]))
        return cls(block, StackedMLP.from_modules([net.mlp for net in nets]), len(nets))

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        v = E.flatten(1)
        h = self.block(v, v.unsqueeze(0))  # (n · blocks, B, q)
        n, (par, B, q) = self.num_branches, h.shape
        h = h.view(n, par // n, B, q).transpose(1, 2).reshape(n, B, par // n * q)
        return self.mlp(h)


class StackedHashCodebook(nn.Module):
    """``n`` :class:`HashCodebook` s (linear memory restoring; ``sum`` or ``global_attentive`` shrinking) over the
    same fields with the same hash functions: one bucket computation, one lookup into the branches' codebooks
    stacked as row blocks of one sparse table (row ``k · rows + r`` is branch ``k``'s row ``r``)."""

    def __init__(self, ref: HashCodebook, codebook: nn.Embedding, restore: StackedLinear, gas: nn.Module | None):
        super().__init__()
        self.ref = [ref]  # bucket computation and buffers only (not registered: its parameters are not used)
        self.num_branches = restore.num_branches
        self.rows = codebook.num_embeddings // self.num_branches
        self.codebook, self.restore, self.gas = codebook, restore, gas
        self.register_buffer("incidence", ref.incidence.clone(), persistent=False)
        self.out_dim = ref.out_dim

    @classmethod
    def from_modules(cls, hcs: Sequence[HashCodebook]) -> StackedHashCodebook:
        ref = hcs[0]
        for hc in hcs:
            same = torch.equal(hc.coeffs, ref.coeffs) and hc.num_buckets == ref.num_buckets
            if not same or hc.restore != "linear" or hc.shrink_softmax or hc.shrink != ref.shrink:
                raise ValueError("stacked codebooks need the same hash functions, linear restoring, no shrink softmax")
        w = torch.cat([hc.codebook.weight.detach() for hc in hcs])
        codebook = nn.Embedding(w.shape[0], w.shape[1], sparse=ref.codebook.sparse, _weight=w.clone())
        restore = StackedLinear.from_modules([hc.restore_linear for hc in hcs])
        gas = None
        if ref.shrink == "global_attentive":
            gas = StackedMLP.from_modules([hc.gas for hc in hcs])
        return cls(ref, codebook, restore, gas)

    def forward(self, ids: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        n, B = self.num_branches, E.shape[0]
        buckets = self.ref[0].buckets(ids)  # (B, P, M), the same for every branch
        if self.gas is None:
            return self._forward_sum(buckets, n, B)
        offsets = torch.arange(n, device=buckets.device).view(n, 1, 1, 1) * self.rows
        codes = self.codebook(buckets.unsqueeze(0) + offsets).flatten(3)  # (n, B, P, M · code_dim)
        P = codes.shape[2]
        v = self.restore(codes.view(n, B * P, -1)).view(n, B, P, -1)
        if self.gas is None:
            z = torch.einsum("fp,nbpd->nbfd", self.incidence, v)
        else:
            weights = self.gas(E.flatten(1)).unsqueeze(2) * self.incidence  # (n, B, F, P)
            z = torch.einsum("nbfp,nbpd->nbfd", weights, v)
        return z.reshape(n, B, -1)

    def _forward_sum(self, buckets: torch.Tensor, n: int, B: int) -> torch.Tensor:
        """Sum shrinking with linear restoring, shrink first: ``z_f = Σ_{p∋f} W_r c_p = W_r Σ_{p∋f} c_p`` (both
        maps are linear, so they commute; equal up to float rounding). The codewords are gathered pair-major,
        ``(P, n·B·M·code_dim)``, so the shrink is one ``(F, P)`` incidence product and the restoring map runs on
        ``F`` vectors per row instead of ``P`` (325 vs 26 on the throughput config): no ``(n, B, P, ·)`` products
        or permuted copies, the largest cost of DTN before."""
        P = buckets.shape[1]
        offsets = torch.arange(n, device=buckets.device).view(1, n, 1, 1) * self.rows
        codes = self.codebook(buckets.permute(1, 0, 2).unsqueeze(1) + offsets)  # (P, n, B, M, code_dim)
        # in the codebook's precision even under autocast: a cast of the (P, ·) block costs more than the product
        with torch.autocast(codes.device.type, enabled=False):
            s = self.incidence.to(codes.dtype) @ codes.view(P, -1)  # (F, n·B·M·code_dim)
        F = s.shape[0]
        s = s.view(F, n, B, -1).permute(1, 2, 0, 3).reshape(n, B * F, -1)  # (n, B·F, M·code_dim)
        return self.restore(s).view(n, B, -1)
