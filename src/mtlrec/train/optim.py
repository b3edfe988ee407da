"""Optimizers: fused Adam for dense parameters, a sparse-aware Adam for the embedding table."""

from __future__ import annotations

import torch
from torch import nn


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse): parameters of ``nn.Embedding(sparse=True)`` modules go to the sparse group."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    dense, sparse = [], []
    for p in model.parameters():
        if p.requires_grad:
            (sparse if id(p) in sparse_ids else dense).append(p)
    return dense, sparse


def build_optimizers(
    model: nn.Module, lr: float, *, embedding_lr: float | None = None, weight_decay: float = 0.0
) -> list[torch.optim.Optimizer]:
    """Adam (``fused=True`` where the build supports it) on dense parameters; ``SparseAdam`` (lazy Adam: only the
    rows a batch touches are updated) on sparse embedding tables."""
    dense, sparse = split_parameters(model)
    opts: list[torch.optim.Optimizer] = []
    if dense:
        try:
            opts.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=True))
        except (RuntimeError, TypeError):
            opts.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, foreach=True))
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=embedding_lr or lr))
    return opts
