"""``n`` copies of an interaction module with separate parameters, evaluated together as batched products.

DTN runs the same three feature-interaction modules (GDCN, MaskNet, MemoNet) in every task-specific and shared
branch, each with its own parameters, on the same input. Evaluated one branch and one module at a time that is
dozens of small matrix products and, for MemoNet, one hashed-codebook lookup and one sparse gradient per branch.
The classes here hold the ``n`` copies' parameters stacked on a leading branch axis and compute all branches with
one ``bmm``/``baddbmm`` per layer (GDCN's cross and gate weights of a layer are one product), one codebook lookup
(the branches' codebooks interleaved in one table, each hashed row holding every branch's codeword, addressed by
one :class:`CrossLookup` that several stacked codebooks with the same hashes share) and one sparse gradient. Each
is built ``from_modules`` of the per-branch modules, so its initialisation is exactly theirs, and computes the
same function up to float rounding (``tests/test_stacked_interactions.py`` compares outputs and
gradients with the per-branch modules).

Every ``forward`` returns ``(n, B, out_dim)``: branch ``k``'s output in row ``k``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers import aligned
from mtlrec.layers.autocast import to_autocast
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
        return aligned.matmul(x, self.weight) if self.bias is None else aligned.baddbmm(self.bias, x, self.weight)


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
        # under autocast the input, weights and biases are cast once, so the layers' elementwise gating stays in
        # the low precision (no cast back to fp32 after every product and again before the next); fp32: unchanged
        x0 = to_autocast(x0)
        d = x0.shape[-1]
        x = _shared(x0, self.weight.shape[1])
        weight, bias = self.weight.to(x0.dtype), self.bias.to(x0.dtype)  # the parameters themselves in fp32
        for w, b in zip(weight, bias, strict=True):
            cross, gate = aligned.matmul(x, w).split(d, -1)
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


@dataclasses.dataclass
class CrossLookup:
    """Where one batch's cross tokens read and write a hashed codebook, for every codebook hashed with the same
    functions (DTN's task and shared branches share it). ``bags (F·B·M, F - 1)``: the buckets summed into field
    ``f``'s vector, one bag per ``(f, b, m)``. For the backward, ``rows`` are the touched buckets in increasing
    order and ``sources`` the bag rows whose gradients each receives, grouped by row (``offsets`` into
    ``sources``; each lookup of pair ``(i, j)`` feeds bag rows ``i`` and ``j``)."""

    buckets: torch.Tensor  # (B, P, M)
    bags: torch.Tensor
    rows: torch.Tensor | None = None  # the backward's fields: None when built without autograd
    sources: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        buckets: torch.Tensor,
        field_pairs: torch.Tensor,
        pairs: torch.Tensor,
        *,
        num_rows: int,
        backward: bool = True,
    ) -> CrossLookup:
        """From ``buckets (B, P, M)`` (rows of a ``num_rows``-row codebook), ``field_pairs (F, F - 1)`` (the pairs
        of each field) and ``pairs (P, 2)``; ``backward=False`` skips the backward's fields (evaluation, scoring)."""
        B, P, M = buckets.shape
        F = field_pairs.shape[0]
        # 32-bit bucket and bag-row ids wherever they fit: the gathers, the re-layout and the radix sort move half
        # the bytes (1.33M lookups a step on the throughput config: the bags 34 -> 9 ms, the sort 24 -> 11 ms),
        # and a stable sort's order is the same
        narrow = torch.int32 if max(num_rows, F * B * M) < 2**31 else torch.int64
        keys = buckets.to(narrow)
        bags = keys.index_select(1, field_pairs.reshape(-1)).view(B, F, F - 1, M)
        bags = bags.permute(1, 0, 3, 2).reshape(-1, F - 1)  # bag (f, b, m) is row (f·B + b)·M + m
        if not backward:
            return cls(buckets, bags)
        ordered, order = keys.reshape(-1).sort(stable=True)
        rows, counts = torch.unique_consecutive(ordered, return_counts=True)
        b = torch.arange(B, dtype=narrow, device=buckets.device).view(B, 1, 1)
        m = torch.arange(M, dtype=narrow, device=buckets.device).view(1, 1, M)
        ends = [
            ((pairs[:, k].to(narrow).view(1, P, 1) * B + b) * M + m).reshape(-1).index_select(0, order) for k in (0, 1)
        ]
        sources = torch.stack(ends, 1).reshape(-1)
        offsets = torch.zeros_like(counts)
        offsets[1:] = counts[:-1].cumsum(0) * 2
        return cls(buckets, bags, rows.long(), sources, offsets.to(narrow))


class _PairSumLookup(torch.autograd.Function):
    """``s[f, b, m] = Σ_{p ∋ f} table[buckets[b, p, m]]``, ``(F, B, M, width)``, as one ``embedding_bag`` over each
    field's pairs, and its table gradient as one ``embedding_bag`` over the gradient rows each touched bucket
    receives (:class:`CrossLookup`): the touched rows come out summed and in order, with no ``(P, B, M, width)``
    gradient of gathered codewords, no scatter into a table-sized buffer and no sort of per-lookup gradients. The
    gradient is sparse (coalesced) for a sparse table and dense otherwise, as ``nn.Embedding`` gives."""

    @staticmethod
    def forward(ctx, table, bags, rows, sources, offsets, shape, sparse):  # noqa: ANN001, ANN205 - Function API
        ctx.save_for_backward(rows, sources, offsets)
        ctx.table_shape, ctx.sparse = table.shape, sparse
        return nn.functional.embedding_bag(bags, table, mode="sum").view(*shape, table.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        rows, sources, offsets = ctx.saved_tensors
        num_rows, width = ctx.table_shape
        summed = nn.functional.embedding_bag(sources, grad.reshape(-1, width), offsets, mode="sum")
        if ctx.sparse:
            table_grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), summed, (num_rows, width), is_coalesced=True, check_invariants=False
            )
        else:
            table_grad = summed.new_zeros(num_rows, width).index_copy_(0, rows, summed)
        return table_grad, None, None, None, None, None, None


def pair_sums(table: torch.Tensor, lookup: CrossLookup, sparse: bool) -> torch.Tensor:
    """``(F, B, M, width)``: for each field, the sum of its pairs' codewords (rows of ``table``)."""
    B, _, M = lookup.buckets.shape
    shape = (lookup.bags.shape[0] // (B * M), B, M)
    if torch.is_grad_enabled() and table.requires_grad:
        if lookup.rows is None:
            raise ValueError("this CrossLookup was built without its backward (under no_grad): build it with grad on")
        return _PairSumLookup.apply(table, lookup.bags, lookup.rows, lookup.sources, lookup.offsets, shape, sparse)
    return nn.functional.embedding_bag(lookup.bags, table, mode="sum").view(*shape, table.shape[1])


class StackedHashCodebook(nn.Module):
    """``n`` :class:`HashCodebook` s (linear memory restoring; ``sum`` or ``global_attentive`` shrinking) over the
    same fields with the same hash functions: one bucket computation and one lookup for all branches. The
    branches' codebooks are interleaved in one table of ``rows`` rows and ``n · code_dim`` columns (row ``r`` holds
    every branch's codeword ``r``, columns ``k · code_dim …`` branch ``k``'s): a bucket is one contiguous read and
    one gradient row for all branches (the hashed rows are random, so the number of rows touched, not their width,
    is what a lookup costs). :meth:`branch_view` gives branch ``k``'s ``(rows, code_dim)`` block of the table or
    of its gradient."""

    def __init__(self, ref: HashCodebook, codebook: nn.Embedding, restore: StackedLinear, gas: nn.Module | None):
        super().__init__()
        self.ref = [ref]  # bucket computation and buffers only (not registered: its parameters are not used)
        self.num_branches = restore.num_branches
        self.rows = codebook.num_embeddings
        self.code_dim = codebook.embedding_dim // self.num_branches
        self.codebook, self.restore, self.gas = codebook, restore, gas
        self.register_buffer("incidence", ref.incidence.clone(), persistent=False)
        F = ref.num_fields
        field_pairs = [[p for p in range(ref.num_pairs) if ref.incidence[f, p]] for f in range(F)]
        self.register_buffer("field_pairs", torch.tensor(field_pairs, dtype=torch.long), persistent=False)
        self.register_buffer("pairs", torch.stack([ref.left, ref.right], 1), persistent=False)  # (P, 2)
        self.out_dim = ref.out_dim

    @classmethod
    def from_modules(cls, hcs: Sequence[HashCodebook]) -> StackedHashCodebook:
        ref = hcs[0]
        for hc in hcs:
            same = torch.equal(hc.coeffs, ref.coeffs) and hc.num_buckets == ref.num_buckets
            if not same or hc.restore != "linear" or hc.shrink_softmax or hc.shrink != ref.shrink:
                raise ValueError("stacked codebooks need the same hash functions, linear restoring, no shrink softmax")
        w = torch.stack([hc.codebook.weight.detach() for hc in hcs], 1).flatten(1)  # (rows, n · code_dim)
        codebook = nn.Embedding(w.shape[0], w.shape[1], sparse=ref.codebook.sparse, _weight=w.clone())
        restore = StackedLinear.from_modules([hc.restore_linear for hc in hcs])
        gas = None
        if ref.shrink == "global_attentive":
            gas = StackedMLP.from_modules([hc.gas for hc in hcs])
        return cls(ref, codebook, restore, gas)

    def branch_view(self, table: torch.Tensor, k: int) -> torch.Tensor:
        """Branch ``k``'s ``(rows, code_dim)`` block of ``table`` (the codebook weight or its dense gradient)."""
        return table.view(self.rows, self.num_branches, self.code_dim)[:, k]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # checkpoints written before the interleaved layout stacked the branches as row blocks (n · rows, code_dim)
        key = prefix + "codebook.weight"
        old = state_dict.get(key)
        n = self.num_branches
        if old is not None and old.shape == (n * self.rows, self.code_dim) and n > 1:
            state_dict[key] = old.view(n, self.rows, self.code_dim).transpose(0, 1).reshape(self.rows, -1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def lookup(self, ids: torch.Tensor) -> CrossLookup:
        """The :class:`CrossLookup` of ``ids (B, F)``: pass it to every stacked codebook with these hashes."""
        backward = torch.is_grad_enabled()  # evaluation and scoring need no backward addressing
        buckets = self.ref[0].buckets(ids)
        with torch.no_grad():
            return CrossLookup.build(buckets, self.field_pairs, self.pairs, num_rows=self.rows, backward=backward)

    def same_hashes(self, other: StackedHashCodebook) -> bool:
        a, b = self.ref[0], other.ref[0]
        return torch.equal(a.coeffs, b.coeffs) and a.num_buckets == b.num_buckets and a.num_fields == b.num_fields

    def forward(self, ids: torch.Tensor | CrossLookup, E: torch.Tensor) -> torch.Tensor:
        """``(n, B, out_dim)`` from the field values ``ids (B, F)`` or their :meth:`lookup`."""
        lookup = ids if isinstance(ids, CrossLookup) else self.lookup(ids)
        n, B = self.num_branches, E.shape[0]
        if self.gas is None:
            return self._forward_sum(lookup, n, B)
        codes = self.codebook(lookup.buckets)  # (B, P, M, n · code_dim)
        P, M = codes.shape[1], codes.shape[2]
        codes = codes.view(B, P, M, n, -1).permute(3, 0, 1, 2, 4).reshape(n, B * P, -1)
        v = self.restore(codes).view(n, B, P, -1)
        weights = self.gas(E.flatten(1)).unsqueeze(2) * self.incidence  # (n, B, F, P)
        z = torch.einsum("nbfp,nbpd->nbfd", weights, v)
        return z.reshape(n, B, -1)

    def _forward_sum(self, lookup: CrossLookup, n: int, B: int) -> torch.Tensor:
        """Sum shrinking with linear restoring, shrink first: ``z_f = Σ_{p∋f} W_r c_p = W_r Σ_{p∋f} c_p`` (both
        maps are linear, so they commute; equal up to float rounding). The shrink is one ``embedding_bag`` over
        each field's pairs (:func:`pair_sums`), so the ``P`` codewords per row are never materialised, and the
        restoring map runs on ``F`` vectors per row instead of ``P`` (26 vs 325 on the throughput config)."""
        table = self.codebook.weight
        # in the codebook's precision even under autocast: the sums are gathers, not products worth casting
        with torch.autocast(table.device.type, enabled=False):
            s = pair_sums(table, lookup, self.codebook.sparse)
        F, M = s.shape[0], s.shape[2]
        s = s.view(F, B, M, n, -1).permute(3, 1, 0, 2, 4).reshape(n, B * F, -1)  # (n, B·F, M·code_dim)
        return self.restore(s).view(n, B, -1)
