"""OMoE and MMoE (Ma et al., KDD'18; MODELS.md E.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.autocast import to_autocast
from mtlrec.layers.experts import BatchedExperts
from mtlrec.layers.gates import Gate, mix, mix_each
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class _MixtureOfExperts(MultiTaskModel):
    """Shared experts ``f_i`` (identical ReLU MLPs, evaluated as one batched product) mixed by softmax gates."""

    num_gates: int

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (256, 128),
        expert_dropout: float = 0.0,
        gate_hidden: Sequence[int] = (),
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.experts = BatchedExperts(
            num_experts, self.input_dim, expert_hidden, activation_name=self.activation, dropout=expert_dropout
        )
        self.gates = nn.ModuleList(Gate(self.input_dim, num_experts, hidden=gate_hidden) for _ in range(self.num_gates))
        self.build_towers(self.experts.output_dim)

    def backbone(self, inputs: EmbeddedInputs) -> list[torch.Tensor]:
        x = to_autocast(inputs.flat())  # read by the gates and the experts: cast once under autocast
        if self.experts.inference_form and not torch.is_grad_enabled():
            # exported graphs and scoring engines (use_inference_form): one GEMM chain per expert, no transposes
            outs = self.experts.each(x)
            mixed = [mix_each(g(x), outs) for g in self.gates]
        else:
            experts = self.experts(x)
            mixed = [mix(g(x), experts) for g in self.gates]
        return mixed if len(mixed) == len(self.tasks) else mixed * len(self.tasks)


@register_model("omoe", family="multi_task_baseline", paper="MMoE (Ma et al., KDD'18) eq. 4: One-gate MoE")
class OMoE(_MixtureOfExperts):
    """One-gate Mixture-of-Experts: ``y_k = h^k(Σ_i g(x)_i f_i(x))`` (MMoE paper eq. 4), one gate for all tasks.

    [A] gate: linear + softmax as in the paper; ``gate_hidden`` adds an MLP (FuxiCTR's deviation).
    """

    num_gates = 1


@register_model("mmoe", family="multi_task_baseline", paper="Ma et al., KDD'18, eqs. 4-5")
class MMoE(_MixtureOfExperts):
    """Multi-gate Mixture-of-Experts: ``f^k(x) = Σ_i g^k(x)_i f_i(x)``, ``g^k(x) = softmax(W_gk x)``,
    ``y_k = h^k(f^k(x))`` (MMoE eqs. 4-5).

    Gates are linear (the paper); ``gate_hidden`` adds an MLP before the softmax (FuxiCTR's deviation, [A] off).
    Experts are identical ReLU MLPs of ``expert_hidden`` units (paper §5.1 uses 8 experts × 16 units).
    """

    def __init__(self, layout: FeatureLayout, tasks: Sequence[TaskSpec], **kw) -> None:
        self.num_gates = len(tasks)
        super().__init__(layout, tasks, **kw)
