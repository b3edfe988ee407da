"""Single-task networks and Shared-Bottom (MODELS.md E.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.mlp import MLP
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


@register_model("single_task", family="multi_task_baseline", paper="MMoE (Ma et al., KDD'18) §6: Single-Task")
class SingleTask(MultiTaskModel):
    """One independent network per task: its own embeddings, bottom MLP and tower (no parameter is shared).

    The per-task embeddings live in the one fused table as disjoint slices of width ``embedding_dim`` (the table
    is ``T × embedding_dim`` wide), so the tasks share no parameter while a batch still needs one lookup. Trained
    jointly on the sum of task losses, each task's parameters receive only its own gradient, which is the same as
    training T separate models on the same batches. Used as the reference of the MTL gain (PLE §5).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        bottom_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, embedding_copies=len(tasks), **kw)
        self.bottoms = nn.ModuleList(
            MLP(self.input_dim, bottom_hidden, activation_name=self.activation, dropout=dropout) for _ in self.tasks
        )
        self.build_towers([b.output_dim for b in self.bottoms])

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        slices = x.fields.split(self.embedding_dim, dim=-1)
        return [bottom(EmbeddedInputs(s, x.dense).flat()) for bottom, s in zip(self.bottoms, slices, strict=True)]


@register_model("shared_bottom", family="multi_task_baseline", paper="Caruana 1997; MMoE (KDD'18) eq. 1")
class SharedBottom(MultiTaskModel):
    """Hard parameter sharing: ``y_k = h^k(f(x))`` (MMoE eq. 1) with a shared bottom MLP ``f``."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        bottom_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.bottom = MLP(self.input_dim, bottom_hidden, activation_name=self.activation, dropout=dropout)
        self.build_towers(self.bottom.output_dim)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h = self.bottom(x.flat())
        return [h] * len(self.tasks)
