"""One fused embedding table for every categorical and multi-valued field, plus numeric-field vectors."""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout


class FusedEmbedding(nn.Module):
    """All fields' embeddings from a single ``(total_vocab, dim)`` table, indexed through per-field offsets.

    Output: ``E`` of shape ``(B, F, dim)`` with fields in :attr:`FeatureLayout.field_names` order: single-valued
    categorical fields, pooled multi-valued fields (mean or sum over non-padding ids), then numeric fields, each
    embedded as ``x_j * v_j`` (a learned vector per numeric field) unless ``embed_numeric=False``, in which
    case the model receives them raw as a dense block (see :class:`~mtlrec.models.base.EmbeddedInputs`). ``sparse=True`` gives the table sparse
    gradients, so only the rows a batch touches are updated.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        dim: int,
        *,
        sparse: bool = True,
        init_std: float = 1e-2,
        embed_numeric: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.dim = dim
        sizes = [v for _, v in layout.categorical] + [m.vocab_size for m in layout.multi_valued]
        offsets = (
            torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0, dtype=torch.long)
        )
        n_cat = len(layout.categorical)
        self.register_buffer("cat_offsets", offsets[:n_cat].clone(), persistent=False)
        self.register_buffer("multi_offsets", offsets[n_cat:].clone(), persistent=False)
        self.table = nn.Embedding(max(1, sum(sizes)), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std)
        self.embed_numeric = embed_numeric
        self.numeric = (
            nn.Parameter(torch.randn(len(layout.numeric), dim) * init_std) if layout.numeric and embed_numeric else None
        )

    @property
    def num_fields(self) -> int:
        """Fields in the output ``E`` (numeric ones only when they are embedded)."""
        n = len(self.layout.categorical) + len(self.layout.multi_valued)
        return n + (len(self.layout.numeric) if self.embed_numeric else 0)

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = []
        if self.cat_offsets.numel():
            parts.append(self.table(batch.cat + self.cat_offsets))
        for j, m in enumerate(self.layout.multi_valued):
            ids = batch.multi[m.name]
            valid = (ids > 0).unsqueeze(-1).to(self.table.weight.dtype)
            vecs = self.table(ids + self.multi_offsets[j]) * valid
            pooled = vecs.sum(1)
            if m.pooling == "mean":
                pooled = pooled / valid.sum(1).clamp_min(1.0)
            parts.append(pooled.unsqueeze(1))
        if self.numeric is not None:
            parts.append(batch.num.unsqueeze(-1) * self.numeric)
        if not parts:
            return batch.num.new_zeros(batch.num.shape[0], 0, self.dim)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]
