"""Optional model capabilities, declared as :class:`typing.Protocol` classes.

Plug-ins (virtual gradient) and :mod:`mtlrec.explain` ask a model for an optional capability with
``isinstance(model, Protocol)`` against the protocols below, never by probing attribute names. A model declares a
capability by implementing the protocol's members (and, for readability, by naming the protocol as a base class:
the protocols are ``runtime_checkable`` and structural, so either way works).

* :class:`GateTable` — learned gate values per task as a (public expert × mapping) table (MT-PHN, DEPHN).
* :class:`LogitParts` — the public and private parts of each task's pre-sigmoid logit (MT-PHN, DEPHN, Fig. 3b).
* :class:`VGGateGroups` — which gates the virtual gradient compares, one group of T gates per task (DEPHN).
* :class:`GateSummary` — mean gate weight per (task, named vector) over the last batch (DTN).
* :class:`DefaultPlugins` — plug-ins that a model switches on by its own configuration (DEPHN's VG): the registry
  attaches them through the same path as ``create_model(..., dml=..., virtual_gradient=...)``.
* :class:`ConversionFunnel` — the click → conversion funnel a model scores, for the CTCVR metric (ESMM, AITM).
* :class:`TowerPluginHost` — tower plug-in points (DML's CTFM and GKD): every :class:`~mtlrec.models.base.MultiTaskModel`.
* :class:`OptimizerGroups` — parameters that train under their own optimizer (the VG plug-in's ``gate_optimizer``):
  the trainer builds one optimizer per group and leaves those parameters out of the default Adam.
* :class:`EpochStats` — quantities measured over a training epoch (the VG plug-in's Γ), written by the trainer into
  that epoch's ``log.jsonl`` record under ``model_stats``.

Every :class:`~mtlrec.models.base.MultiTaskModel` implements the last two by collecting from the objects plug-ins
attach to it (``model.attachments``) that implement them.

Example::

    >>> from mtlrec.models.capabilities import GateTable
    >>> class NoGates: ...
    >>> isinstance(NoGates(), GateTable)
    False
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class GateTable(Protocol):
    """``gate_table(batch)`` → ``{task: (num_experts, num_mappings)}``; rows named by ``expert_names``, columns by
    ``mapping_names``. Input-dependent gates average over ``batch``'s rows (``batch=None`` may raise ``ValueError``)."""

    expert_names: list[str]
    mapping_names: list[str]

    def gate_table(self, batch: Any | None = None) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class LogitParts(Protocol):
    """``logit_parts(batch)`` → ``{task: (public (B,), private (B,))}``, the two parts of the pre-sigmoid logit
    (bias left out). Raises ``ValueError`` where the split is not defined for the model's configuration."""

    def logit_parts(self, batch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]: ...


@runtime_checkable
class VGGateGroups(Protocol):
    """``vg_gate_groups()`` → lists of T gates (one per task, in task order) that the virtual gradient compares;
    without it the plug-in groups the model's gates by parent module and width."""

    def vg_gate_groups(self) -> list[list[nn.Module]]: ...


@runtime_checkable
class GateSummary(Protocol):
    """``gate_summary()`` → ``{task: (N,)}`` mean gate weights over the last batch; ``vector_names()`` names the N."""

    def gate_summary(self) -> dict[str, torch.Tensor]: ...

    def vector_names(self) -> list[str]: ...


@runtime_checkable
class DefaultPlugins(Protocol):
    """``default_plugins()`` → ``{plugin key: spec}`` attached by :func:`~mtlrec.models.registry.create_model` unless
    the caller passes that key (a caller's dict spec is merged over the default one; ``False`` switches it off)."""

    def default_plugins(self) -> dict[str, Any]: ...


@runtime_checkable
class TowerPluginHost(Protocol):
    """Tower plug-in points: ``tower_input_dims``, ``towers`` (task → tower MLP) and ``add_plugin(plugin)``."""

    tower_input_dims: list[int]
    towers: nn.ModuleDict

    def add_plugin(self, plugin: nn.Module) -> Any: ...


@runtime_checkable
class ConversionFunnel(Protocol):
    """``ctcvr_funnel``: ``(task names in funnel order, how pCTCVR is formed)`` with ``"product"`` (the tasks'
    probabilities multiplied, ESMM) or ``"last"`` (the last task's head scores the whole funnel, AITM with its
    calibrator), or ``None`` when this instance models no funnel; :func:`mtlrec.metrics.score_tasks` then reports
    ``ctcvr_auc`` / ``ctcvr_logloss``."""

    @property
    def ctcvr_funnel(self) -> tuple[list[str], str] | None: ...


#: the optimizers an :class:`OptimizerGroups` group may name
GROUP_OPTIMIZERS = ("adam", "sgd")


@runtime_checkable
class OptimizerGroups(Protocol):
    """``optimizer_groups()`` → ``[{"name": str, "params": [Parameter], "optimizer": "adam" | "sgd", "lr": float |
    None, "momentum": float}]``: each group trains under its own optimizer (``lr`` None: the train lr); a parameter
    belongs to at most one group."""

    def optimizer_groups(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class EpochStats(Protocol):
    """``epoch_stats()`` → ``{name: JSON-able value}`` measured since the last call (the trainer calls it once at
    the end of every training epoch; the call starts the next epoch's measurement). ``{}``: nothing to record."""

    def epoch_stats(self) -> dict[str, Any]: ...
