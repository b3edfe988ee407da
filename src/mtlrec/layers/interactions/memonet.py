"""HCNet, MemoNet's multi-hash codebook (Zhang et al., arXiv 2211.01334; MODELS.md D.2)."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

_PRIME = 2_147_483_647  # 2^31 - 1: every product below stays under 2^62, so int64 arithmetic never overflows


def cross_hash(
    left: torch.Tensor, right: torch.Tensor, pair: torch.Tensor, coeffs: torch.Tensor, num_buckets: int
) -> torch.Tensor:
    """Bucket ids ``(..., P, M)`` of the cross tokens ``(i, val_i, j, val_j)``.

    ``left``/``right``: field values ``(..., P)`` (any int64); ``pair``: a pair code ``(P,)``; ``coeffs``:
    ``(M, 5)`` multipliers in ``[1, p)``, one row per hash function. Each hash is a polynomial hash modulo the
    Mersenne prime ``p = 2^31 - 1`` (deterministic, vectorised, no string formatting), then modulo ``num_buckets``.
    """
    a = coeffs.unbind(-1)
    h = (pair.unsqueeze(-1) * a[0] + a[4]) % _PRIME  # (P, M)
    h = (h * a[1] + (left % _PRIME).unsqueeze(-1)) % _PRIME
    h = (h * a[2] + (right % _PRIME).unsqueeze(-1)) % _PRIME
    h = (h * a[3] + a[4]) % _PRIME
    return h % num_buckets


def cross_hash_tables(pair: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cross_hash` factored for :func:`field_cross_hash`: ``(neg_const (P, M) int32, left_mult (M,),
    right_mult (M,))``. Reduction modulo ``p`` commutes with sums and products, so with ``a_0..a_4`` the
    multipliers of one hash ``h(i, l, j, r) = (C_ij + l · a_2 a_3 + r · a_3) mod p`` where ``C_ij = (((pair_ij ·
    a_0 + a_4) · a_1 a_2 a_3) + a_4) mod p``: the pair part is a constant, and each field value is multiplied once
    per field instead of once per pair. ``neg_const`` holds ``p - C`` (in ``(0, p]``, an int32)."""
    a = coeffs.unbind(-1)
    c = (pair.unsqueeze(-1) * a[0] + a[4]) % _PRIME  # every product below is of two values < p: under 2^62
    for k in (1, 2, 3):
        c = c * a[k] % _PRIME
    c = (c + a[4]) % _PRIME
    return (_PRIME - c).to(torch.int32), a[2] * a[3] % _PRIME, a[3] % _PRIME


def field_cross_hash(
    values: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_buckets: int,
) -> torch.Tensor:
    """:func:`cross_hash` of every field pair ``(left[k], right[k])`` of ``values (B, F)`` (any int64), equal to it
    bit for bit, as int32 ``(B, P, M)``: each field's terms are reduced once (``(B, F, M)``), and the per-pair work
    is two gathers, two additions modulo ``p`` done in int32 (``x - y`` with ``x, y`` in ``[0, p]`` cannot
    overflow) and one int32 remainder: 3-4x faster than the five int64 remainders per pair of :func:`cross_hash`
    (MemoNet's hashing was 20% of a census DTN step in bf16)."""
    neg_const, left_mult, right_mult = tables
    v = (values % _PRIME).unsqueeze(-1)  # (B, F, 1)
    lt = (v * left_mult % _PRIME).to(torch.int32)  # (B, F, M), in [0, p)
    rt_neg = (_PRIME - v * right_mult % _PRIME).to(torch.int32)  # p - (r · a_3 mod p), in (0, p]
    h = lt.index_select(1, left)
    h -= rt_neg.index_select(1, right)  # (l + r) - p, in (-p, p)
    h += h.lt(0).to(torch.int32).mul_(_PRIME)  # (l + r) mod p
    h -= neg_const
    h += h.lt(0).to(torch.int32).mul_(_PRIME)  # (C + l + r) mod p
    return h.remainder_(num_buckets)


class HashCodebook(nn.Module):
    """HCNet: memorises second-order cross features in a hashed codebook; ``forward(ids (B, F), E (B, F, D))``
    returns ``flatten(Z) (B, out_dim)`` with ``out_dim = F · code_out_dim``.

    1. Cross tokens: every field pair ``i < j`` gives the token ``(i, id_i, j, id_j)``; ``N_c = F(F-1)/2``.
    2. Multi-hash addressing: ``num_hashes`` (M) hash functions map each token to codewords in a codebook
       ``C ∈ R^{num_buckets × code_dim}`` shared by the hashes (``hash_share=False``: one codebook per hash).
       [A] The TF string hash is replaced by a seeded polynomial hash of ``(pair, id_i, id_j)`` modulo
       ``2^31 - 1`` (:func:`cross_hash`), as MODELS.md D.2 proposes; ``seed`` picks the hash functions.
    3. Memory restoring: ``restore="linear"`` (LMR) ``v = W_r [c_1; …; c_M]`` (no bias); ``"attentive"`` (AMR,
       ``senetorigin``) reweights the codewords bit-wise by ``W_2 ReLU(W_1 [e_i; e_j])`` (no output activation)
       before the same linear map. [A] the AMR MLP's hidden width is ``M · code_dim``.
    4. Feature shrinking to F vectors: ``shrink="sum"``: ``z_i = Σ_{crosses ∋ i} v``; ``"global_attentive"`` (GAS,
       ``senetsum``): ``α = W_2 ReLU(W_1 flatten(E))`` (``W_1: FD→FD``, ``W_2: FD→N_c``, no output activation),
       ``z_i = Σ_{(i,j)} α_ij v_ij``; ``shrink_softmax=True`` normalises α over each field's crosses.

    The codebook is an ``nn.Embedding`` (``sparse`` gradients by default) initialised N(0, ``init_std``).
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_buckets: int,
        num_hashes: int = 2,
        restore: str = "linear",
        shrink: str = "sum",
        *,
        code_dim: int | None = None,
        code_out_dim: int | None = None,
        hash_share: bool = True,
        shrink_softmax: bool = False,
        sparse: bool = True,
        init_std: float = 1e-2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if restore not in ("linear", "attentive"):
            raise ValueError(f"restore must be 'linear' or 'attentive', got {restore!r}")
        if shrink not in ("sum", "global_attentive"):
            raise ValueError(f"shrink must be 'sum' or 'global_attentive', got {shrink!r}")
        if num_fields < 2:
            raise ValueError("HashCodebook needs at least two fields")
        if not 1 <= num_buckets < _PRIME:
            raise ValueError(f"num_buckets must be in [1, 2^31 - 1), got {num_buckets}")
        self.num_fields, self.num_buckets, self.num_hashes = num_fields, num_buckets, num_hashes
        self.restore, self.shrink, self.shrink_softmax, self.hash_share = restore, shrink, shrink_softmax, hash_share
        cd = code_dim or dim
        self.code_dim, self.code_out_dim = cd, code_out_dim or dim
        self.out_dim = num_fields * self.code_out_dim
        pairs = list(itertools.combinations(range(num_fields), 2))
        self.num_pairs = len(pairs)
        left = torch.tensor([i for i, _ in pairs])
        right = torch.tensor([j for _, j in pairs])
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        self.register_buffer("pair_code", left * num_fields + right + 1, persistent=False)
        incidence = torch.zeros(num_fields, self.num_pairs)
        incidence[left, torch.arange(self.num_pairs)] = 1.0
        incidence[right, torch.arange(self.num_pairs)] = 1.0
        self.register_buffer("incidence", incidence, persistent=False)  # (F, N_c): field i is in cross p
        rng = np.random.default_rng(seed)
        coeffs = torch.from_numpy(rng.integers(1, _PRIME, size=(num_hashes, 5), dtype=np.int64))
        self.register_buffer("coeffs", coeffs, persistent=False)
        const, left_mult, right_mult = cross_hash_tables(self.pair_code, coeffs)
        self.register_buffer("hash_const", const, persistent=False)
        self.register_buffer("hash_left", left_mult, persistent=False)
        self.register_buffer("hash_right", right_mult, persistent=False)
        rows = num_buckets * (1 if hash_share else num_hashes)
        self.codebook = nn.Embedding(rows, cd, sparse=sparse)
        nn.init.normal_(self.codebook.weight, std=init_std)
        self.restore_linear = nn.Linear(num_hashes * cd, self.code_out_dim, bias=False)
        if restore == "attentive":
            h = num_hashes * cd
            self.amr = nn.Sequential(nn.Linear(2 * dim, h), nn.ReLU(), nn.Linear(h, h))
        if shrink == "global_attentive":
            fd = num_fields * dim
            self.gas = nn.Sequential(nn.Linear(fd, fd), nn.ReLU(), nn.Linear(fd, self.num_pairs))

    def buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """Codebook rows ``(B, N_c, M)`` addressed by each cross token of ``ids (B, F)`` (:func:`cross_hash`),
        int32 where the codebook's rows fit."""
        tables = (self.hash_const, self.hash_left, self.hash_right)
        b = field_cross_hash(ids, self.left, self.right, tables, self.num_buckets)
        if not self.hash_share:
            if self.num_buckets * self.num_hashes >= 2**31:
                b = b.long()
            b = b + torch.arange(self.num_hashes, device=b.device, dtype=b.dtype) * self.num_buckets
        return b

    def forward(self, ids: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        bsz = E.shape[0]
        codes = self.codebook(self.buckets(ids)).flatten(2)  # (B, N_c, M·code_dim)
        if self.restore == "attentive":
            pair_emb = torch.cat([E[:, self.left], E[:, self.right]], -1)  # (B, N_c, 2D)
            codes = codes * self.amr(pair_emb)
        v = self.restore_linear(codes)  # (B, N_c, d_out)
        if self.shrink == "sum":
            z = torch.einsum("fp,bpd->bfd", self.incidence, v)
        else:
            alpha = self.gas(E.flatten(1))  # (B, N_c)
            if self.shrink_softmax:
                logits = alpha.unsqueeze(1).masked_fill(self.incidence == 0, float("-inf"))
                weights = torch.softmax(logits, dim=-1)  # (B, F, N_c)
            else:
                weights = alpha.unsqueeze(1) * self.incidence
            z = torch.einsum("bfp,bpd->bfd", weights, v)
        return z.reshape(bsz, -1)
