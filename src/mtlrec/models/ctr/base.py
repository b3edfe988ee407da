"""The common frame of the CTR models: one interaction network per task (default) or one shared by all tasks.

Each CTR paper defines a single-task model ``x → representation → σ(w^T h + b)``. Here the representation is the
tower input of the :class:`~mtlrec.models.base.MultiTaskModel` pipeline, and the towers default to no hidden layer
(``tower_hidden=()``), so each task head is exactly the paper's output layer. With ``shared=False`` (default) every
task gets its own embeddings (disjoint slices of the fused table, as ``single_task``) and its own network, which
is the "single-task learning" row of a benchmark trained by the same trainer; ``shared=True`` builds one network
whose representation feeds every task head (hard sharing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.embedding import FusedEmbedding
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.schema import TaskSpec


@dataclasses.dataclass
class CTRInputs(EmbeddedInputs):
    """:class:`EmbeddedInputs` plus what some CTR networks need beyond the embeddings.

    ``wide``: per-field first-order weights ``(B, F, 1)`` (``w_i x_i`` of the linear/"wide" part), when the model
    has a linear part. ``ids``: per-field raw values ``(B, F)`` int64 for hashing (MemoNet), when needed.
    """

    wide: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def linear_logit(self) -> torch.Tensor:
        """The first-order term ``Σ_i w_i x_i`` as ``(B, 1)``."""
        if self.wide is None:
            raise ValueError("this model was built without a linear part")
        return self.wide.sum(1)

    def with_dense(self, h: torch.Tensor) -> torch.Tensor:
        """``[h ; dense]``: appends the raw numeric block (``numeric_mode="dense"``) to a representation."""
        return h if self.dense is None else torch.cat([h, self.dense.to(h.dtype)], 1)


class CTRModel(MultiTaskModel):
    """Base of the CTR models. Subclasses call :meth:`build_networks` with a factory of networks mapping
    :class:`CTRInputs` to ``(B, out_dim)`` (each network has an ``out_dim`` attribute); :meth:`enable_linear` before
    it when the model has a first-order (wide) part, and set ``needs_ids = True`` when the network hashes raw ids.
    """

    needs_ids: bool = False

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        shared: bool = False,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (),
        **kw,
    ) -> None:
        copies = 1 if shared else len(tasks)
        super().__init__(layout, tasks, tower_hidden=tower_hidden, embedding_copies=copies, **kw)
        self.shared = shared
        self.copies = copies
        self.wide: FusedEmbedding | None = None

    # ---- building ------------------------------------------------------------------------------------------
    def enable_linear(self) -> None:
        """Adds the first-order part: a ``(vocab, copies)`` table (one weight per id and copy) in the same fused
        layout as the embeddings; numeric fields contribute ``w_j x_j`` when they are embedded."""
        self.wide = FusedEmbedding(
            self.layout, self.copies, sparse=self.embedding.table.sparse, embed_numeric=self.numeric_mode == "embed"
        )

    def require_fields(self, minimum: int) -> None:
        """Raises a clear error when a field-interaction model gets fewer embedded fields than it needs."""
        if self.num_fields < minimum:
            raise ValueError(
                f"model {getattr(self, 'registry_name', type(self).__name__)!r} interacts field embeddings and needs "
                f"at least {minimum} embedded fields, but the data has {self.num_fields} (with numeric_mode='dense' "
                "numeric features are not embedded; use numeric_mode='embed')"
            )

    def build_networks(self, factory: Callable[[], nn.Module]) -> None:
        self.nets = nn.ModuleList(factory() for _ in range(self.copies))
        dims = [net.out_dim for net in self.nets]
        self.build_towers(dims * len(self.tasks) if self.shared else dims)

    # ---- forward -------------------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> CTRInputs:
        base = super().embed(batch)
        wide = self.wide(batch) if self.wide is not None else None
        ids = field_ids(batch, self.layout, self.numeric_mode == "embed") if self.needs_ids else None
        return CTRInputs(base.fields, base.dense, wide=wide, ids=ids)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        assert isinstance(x, CTRInputs)
        if self.shared:
            return [self.nets[0](x)] * len(self.tasks)
        fields = x.fields.split(self.embedding_dim, dim=-1)
        wides = x.wide.split(1, dim=-1) if x.wide is not None else [None] * self.copies
        return [
            net(dataclasses.replace(x, fields=f, wide=w)) for net, f, w in zip(self.nets, fields, wides, strict=True)
        ]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The base's shared parameters without embedding-like tables (the linear part, hashed codebooks)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        if self.wide is not None:
            skip |= {id(p) for p in self.wide.parameters()}
        return [p for p in super().shared_parameters() if id(p) not in skip]


_PRIME = 2_147_483_647


def field_ids(batch: Batch, layout: FeatureLayout, embed_numeric: bool) -> torch.Tensor:
    """One int64 value per field ``(B, F)``, in the order of the fused embedding's fields: categorical ids as
    encoded; a multi-valued field's id list folded into one polynomial hash (order-sensitive, padding included);
    numeric values as their float32 bit pattern (exact values, as MemoNet formats floats into its tokens)."""
    parts = [batch.cat]
    for m in layout.multi_valued:
        ids = batch.multi[m.name]
        powers = torch.tensor(
            [pow(1_000_003, k, _PRIME) for k in range(ids.shape[1])], dtype=torch.long, device=ids.device
        )
        parts.append(((ids % _PRIME) * powers % _PRIME).sum(1, keepdim=True))
    if embed_numeric and layout.numeric:
        parts.append(batch.num.float().contiguous().view(torch.int32).long())
    return torch.cat(parts, 1)
