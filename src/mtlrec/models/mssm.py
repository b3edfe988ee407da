"""MSSM: Multiple-level Sparse Sharing Model (Ding et al., Ant Group, SIGIR'21 short, pp. 2237-2241; MODELS.md E.8).

Only the abstract is available, so the concrete design is the proposal of MODELS.md (G.15, [A]):

* FSCM (field-level sparse connection module): hard-concrete field masks ``m^k ∈ [0, 1]^F`` select the feature
  fields a consumer uses, ``E^k = m^k ⊙_field E`` (each field's whole embedding is scaled by its gate).
  ``field_mask="cell"`` (default [A]): one mask per level-0 cell, so every cell reads its own field combination and
  the task-specific routing above turns them into task-specific feature sets; ``"task"``: one mask per task, and the
  whole routed network is run once per task on that task's masked input (stacked along the batch, one pass);
  ``"none"``: ablation without FSCM (then MSSM reduces to SNR-Trans).
* CSSM (cell-level sparse sharing module): levels of cells connected by SNR-Trans routing
  ``v_i = Σ_j z_ij W_ij u_j`` with hard-concrete coding variables ``z`` (see :mod:`mtlrec.models.snr`).
* Towers per task. Loss: task losses + ``λ`` × (expected L0 of the field gates + of the routing gates), returned as the
  aux loss ``"mssm_l0"`` (``λ = l0_weight``; ``field_l0_weight`` overrides λ for the field gates).

Gate constants and sampling follow SNR: β = 2/3, (γ, ζ) = (−0.1, 1.1) [A]; field gates start mostly open
(``field_init_drop`` 0.2 [A]) so that early training sees every field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.routing import HardConcreteGate, RoutedSubnetworks
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.models.snr import _snr_kw
from mtlrec.schema import TaskSpec


@register_model("mssm", family="multi_task_baseline", paper="Ding et al., SIGIR'21 (MSSM): FSCM + CSSM")
class MSSM(MultiTaskModel):
    """Multiple-level sparse sharing: hard-concrete field masks (FSCM) in front of SNR-Trans-routed cells (CSSM).

    ``field_mask``: ``"cell"`` (default) | ``"task"`` | ``"none"``; ``routing``: ``"trans"`` (default) | ``"aver"``.
    ``num_cells`` / ``cell_hidden``: cells per level and each level's cell MLP sizes. The dense numeric block
    (``numeric_mode="dense"``) is not masked. [A] choices are listed in the module docstring.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_cells: Sequence[int] = (3, 3),
        cell_hidden: Sequence[Sequence[int] | int] = (64, 32),
        field_mask: str = "cell",
        routing: str = "trans",
        trans_dim: int | None = None,
        cell_dropout: float = 0.0,
        l0_weight: float = 1e-3,
        field_l0_weight: float | None = None,
        gate_sampling: str = "batch",
        beta: float = 2.0 / 3.0,
        gamma: float = -0.1,
        zeta: float = 1.1,
        gate_init_drop: float = 0.5,
        field_init_drop: float = 0.2,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        if field_mask not in ("cell", "task", "none"):
            raise ValueError(f"field_mask must be 'cell', 'task' or 'none', got {field_mask!r}")
        self.field_mask = field_mask
        self.l0_weight = l0_weight
        self.field_l0_weight = l0_weight if field_l0_weight is None else field_l0_weight
        opts = _snr_kw(
            routing, num_cells, cell_hidden, trans_dim, cell_dropout, gate_sampling, beta, gamma, zeta, gate_init_drop
        )
        self.router = RoutedSubnetworks(
            self.input_dim, num_outputs=len(self.tasks), activation_name=self.activation, **opts
        )
        n_masks = {"cell": num_cells[0], "task": len(self.tasks), "none": 0}[field_mask]
        gate_kw = {"beta": beta, "gamma": gamma, "zeta": zeta, "init_drop": field_init_drop}
        self.field_gates = HardConcreteGate((n_masks, self.num_fields), **gate_kw) if n_masks else None
        self.build_towers(self.router.out_dim)

    def masked_inputs(self, x: EmbeddedInputs) -> torch.Tensor:
        """``(K, B, input_dim)``: the flattened embeddings under each of the K field masks."""
        E = x.fields  # (B, F, D)
        per_example = self.training and self.router.gate_sampling == "example"
        m = self.field_gates(E.shape[0] if per_example else None)  # (K, F) or (B, K, F)
        m = m.unsqueeze(-1) if m.dim() == 2 else m.permute(1, 0, 2).unsqueeze(-1)  # (K, F, 1) | (K, B, F, 1)
        masked = (E.unsqueeze(0) * (m.unsqueeze(1) if m.dim() == 3 else m)).flatten(2)  # (K, B, F·D)
        if x.dense is not None:
            dense = x.dense.to(masked.dtype).expand(masked.shape[0], -1, -1)
            masked = torch.cat([masked, dense], -1)
        return masked

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        if self.field_gates is None:
            return list(self.router(x.flat()).unbind(0))
        masked = self.masked_inputs(x)
        if self.field_mask == "cell":
            return list(self.router(masked).unbind(0))
        T, B = masked.shape[0], masked.shape[1]
        out = self.router(masked.reshape(T * B, -1))  # (T, T·B, d): every task's routing on every task's input
        out = out.view(T, T, B, -1)
        return [out[t, t] for t in range(T)]

    def field_gate_values(self) -> torch.Tensor:
        """The deterministic field masks ``(K, F)`` (what the model uses at test time)."""
        if self.field_gates is None:
            return torch.ones(0, self.num_fields)
        return self.field_gates.deterministic().detach()

    def extra_losses(self) -> dict[str, torch.Tensor]:
        total = self.l0_weight * self.router.expected_l0() if self.l0_weight > 0 else None
        if self.field_gates is not None and self.field_l0_weight > 0:
            f = self.field_l0_weight * self.field_gates.expected_l0()
            total = f if total is None else total + f
        return {} if total is None else {"mssm_l0": total}
