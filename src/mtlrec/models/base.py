"""The multi-task model base: ``embedding → backbone → towers → heads``.

A concrete model implements :meth:`MultiTaskModel.backbone`, which maps the field embeddings ``E (B, F, D)`` to one
tower input per task. The base class owns the towers, the output heads, the plug-in points and the losses, so a
plug-in such as DML attaches to any backbone without knowing it and the trainer never special-cases a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.embedding import FusedEmbedding
from mtlrec.layers.mlp import MLP
from mtlrec.models.capabilities import EpochStats, OptimizerGroups
from mtlrec.schema import TaskSpec


@dataclass
class ModelOutput:
    """``logits``: one ``(B,)`` logit (or regression value) per task. ``aux_losses``: extra named loss terms
    already weighted (e.g. AITM's calibrator, the embedding L2), added to the weighted task losses.
    ``extras``: other named outputs for prediction or inspection (e.g. ESMM's pCTCVR logit)."""

    logits: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EmbeddedInputs:
    """What a backbone receives. ``fields``: field embeddings ``(B, F, D)``. ``dense``: the raw numeric block
    ``(B, n)`` when the model was built with ``numeric_mode="dense"``, else ``None``."""

    fields: torch.Tensor
    dense: torch.Tensor | None = None

    def flat(self) -> torch.Tensor:
        """``x0 = [flatten(E); dense]`` of width :attr:`MultiTaskModel.input_dim`."""
        x = self.fields.flatten(1)
        return x if self.dense is None else torch.cat([x, self.dense.to(x.dtype)], 1)


class TowerPlugin(nn.Module):
    """A module that acts on the tower inputs and/or tower hidden states of any backbone (e.g. DML)."""

    def on_tower_inputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs

    def on_logits(self, hiddens: list[torch.Tensor], logits: list[torch.Tensor]) -> list[torch.Tensor]:
        return logits

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {}


def masked_task_loss(task: TaskSpec, logit: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean loss of one task over the rows of its sample space (PLE eq. 6: ``Σ δ·loss / Σ δ``)."""
    logit = logit.float()
    if task.loss == "bce":
        per_row = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    elif task.loss == "mse":
        per_row = (logit - label) ** 2
    else:
        raise ValueError(f"task {task.name!r}: unknown loss {task.loss!r}")
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


class MultiTaskModel(nn.Module):
    """Base of every mtlrec model.

    Parameters shared by all models: ``embedding_dim``; ``tower_hidden`` (per-task tower MLP; a dict task → sizes
    gives per-task settings); ``tower_dropout``; ``activation``; ``sparse_embedding`` (sparse gradients on the fused
    table); ``embedding_l2`` (L2 on the embedding rows a batch looks up, added as the aux loss ``embedding_l2``);
    ``numeric_mode``: ``embed`` (each numeric feature becomes a field ``x_j v_j``) or ``dense`` (numeric features
    are passed raw beside the flattened embeddings, as the MMoE synthetic experiment feeds ``x``);
    ``embedding_backend``: ``fused`` (one table, default) or ``torchrec`` (a TorchRec EmbeddingBagCollection, one
    table per field, shardable over ranks; the ``mtlrec[torchrec]`` extra).

    ``no_grad_parameters``: glob patterns of parameter names that may legitimately get no gradient on a training
    step (a sampled or gated-off part); the model contract test (tests/test_model_contract.py) exempts exactly those.
    ``registry_name`` is set by :func:`~mtlrec.models.registry.register_model`.
    """

    no_grad_parameters: tuple[str, ...] = ()
    registry_name: str = ""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        embedding_dim: int = 16,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (64,),
        tower_dropout: float = 0.0,
        activation: str = "relu",
        sparse_embedding: bool = True,
        embedding_l2: float = 0.0,
        numeric_mode: str = "embed",
        embedding_copies: int = 1,
        embedding_backend: str = "fused",
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        self.layout = layout
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.embedding_dim = embedding_dim
        self.activation = activation
        self.embedding_l2 = embedding_l2
        if numeric_mode not in ("embed", "dense"):
            raise ValueError(f"numeric_mode must be 'embed' or 'dense', got {numeric_mode!r}")
        self.numeric_mode = numeric_mode
        if embedding_backend == "torchrec":  # one table per field, shardable over ranks (layers/torchrec_embedding.py)
            from mtlrec.layers.torchrec_embedding import TorchRecEmbedding

            self.embedding = TorchRecEmbedding(
                layout, embedding_dim * embedding_copies, embed_numeric=numeric_mode == "embed"
            )
        elif embedding_backend == "fused":
            self.embedding = FusedEmbedding(
                layout, embedding_dim * embedding_copies, sparse=sparse_embedding, embed_numeric=numeric_mode == "embed"
            )
        else:
            raise ValueError(f"embedding_backend must be 'fused' or 'torchrec', got {embedding_backend!r}")
        self.num_fields = self.embedding.num_fields
        self.dense_dim = len(layout.numeric) if numeric_mode == "dense" else 0
        self.input_dim = self.num_fields * embedding_dim + self.dense_dim
        self._tower_hidden = tower_hidden
        self._tower_dropout = tower_dropout
        self.towers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.plugins = nn.ModuleList()
        self.plugin_specs: dict[str, dict] = {}  # plug-in key → the spec it was attached with (set by the registry)
        # non-module objects a plug-in attaches (the VG plug-in): asked for optimizer groups and epoch statistics
        self.attachments: list[object] = []

    # ---- building blocks for subclasses ---------------------------------------------------------------------
    def tower_sizes(self, task: str) -> list[int]:
        th = self._tower_hidden
        return list(th[task]) if isinstance(th, dict) else list(th)

    def build_towers(self, input_dims: int | Sequence[int]) -> None:
        """Create each task's tower MLP and output head; call at the end of a subclass ``__init__``."""
        dims = [input_dims] * len(self.tasks) if isinstance(input_dims, int) else list(input_dims)
        for t, d in zip(self.task_names, dims, strict=True):
            tower = MLP(d, self.tower_sizes(t), activation_name=self.activation, dropout=self._tower_dropout)
            self.towers[t] = tower
            self.heads[t] = nn.Linear(tower.output_dim, 1)
        self.tower_input_dims = dims

    def add_plugin(self, plugin: TowerPlugin) -> MultiTaskModel:
        self.plugins.append(plugin)
        return self

    def attach(self, obj: object) -> MultiTaskModel:
        """Keep a plug-in's non-module object (once) so :meth:`optimizer_groups` and :meth:`epoch_stats` ask it."""
        if all(a is not obj for a in self.attachments):
            self.attachments.append(obj)
        return self

    def optimizer_groups(self) -> list[dict]:
        """:class:`~mtlrec.models.capabilities.OptimizerGroups` of the attached plug-ins (none by default)."""
        return [g for a in self.attachments if isinstance(a, OptimizerGroups) for g in a.optimizer_groups()]

    def epoch_stats(self) -> dict:
        """:class:`~mtlrec.models.capabilities.EpochStats` of the attached plug-ins, merged (``{}`` by default)."""
        out: dict = {}
        for a in self.attachments:
            if isinstance(a, EpochStats):
                out.update(a.epoch_stats())
        return out

    # ---- the forward pipeline ------------------------------------------------------------------------------
    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        """Embedded inputs → one tower input ``(B, d_t)`` per task."""
        raise NotImplementedError

    def tower_outputs(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        """Embedded inputs → each task's tower output: the backbone, the plug-ins' tower-input hooks, the towers.
        A model may form its towers' first layers without building their inputs (DEPHN's folded gates) where
        no plug-in reads those inputs (:meth:`tower_inputs_are_read`)."""
        inputs = self.backbone(x)
        for p in self.plugins:
            inputs = p.on_tower_inputs(inputs)
        return [self.towers[t](h) for t, h in zip(self.task_names, inputs, strict=True)]

    def tower_inputs_are_read(self) -> bool:
        """True when an attached plug-in acts on the tower inputs (DML), so they must be built."""
        return any(type(p).on_tower_inputs is not TowerPlugin.on_tower_inputs for p in self.plugins)

    def fuse_hiddens(self, hiddens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Hook between towers and heads (AITM's information transfer); identity by default."""
        return hiddens

    def embed(self, batch: Batch) -> EmbeddedInputs:
        return EmbeddedInputs(self.embedding(batch), batch.num if self.numeric_mode == "dense" else None)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embed(batch)
        hiddens = self.fuse_hiddens(self.tower_outputs(emb))
        logits = [self.heads[t](h).squeeze(-1) for t, h in zip(self.task_names, hiddens, strict=True)]
        for p in self.plugins:
            logits = p.on_logits(hiddens, logits)
        out = ModelOutput(dict(zip(self.task_names, logits, strict=True)))
        if self.embedding_l2 > 0 and self.training:
            out.aux_losses["embedding_l2"] = self.embedding_l2 * emb.fields.float().pow(2).sum() / len(batch)
        for p in self.plugins:
            out.aux_losses.update(p.aux_losses())
        out.aux_losses.update(self.extra_losses())
        return out

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Named auxiliary loss terms computed during the last forward (e.g. SNR's L0 penalty)."""
        return {}

    # ---- losses --------------------------------------------------------------------------------------------
    def task_losses(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """One unweighted loss per task, shape ``(T,)``, each over its own sample space."""
        return torch.stack(
            [
                masked_task_loss(t, out.logits[t.name], batch.labels[:, j], batch.masks[:, j])
                for j, t in enumerate(self.tasks)
            ]
        )

    def predict_proba(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        """Scores for prediction: probabilities for binary tasks, values for regression tasks."""
        return {
            t.name: torch.sigmoid(out.logits[t.name]) if t.type == "binary" else out.logits[t.name] for t in self.tasks
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        """Dense parameters shared by all tasks (what gradient-based weighting acts on): the backbone's, never the
        embedding table's, towers', heads' or tower plug-ins' (DML's per-task GKD heads are task-specific)."""
        skip = {id(p) for m in (self.embedding, self.towers, self.heads, self.plugins) for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in skip and p.requires_grad]
