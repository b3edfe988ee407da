"""ML-MMoE: multi-level MMoE, the PLE paper's baseline (Tang et al., RecSys'20, §5.1; MODELS.md E.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.experts import BatchedExperts
from mtlrec.layers.gates import Gate, mix
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


@register_model("ml_mmoe", family="multi_task_baseline", paper="PLE (Tang et al., RecSys'20) §5.1: ML-MMoE")
class MLMMoE(MultiTaskModel):
    """Multi-level MMoE "in which all gates share the same selector" (PLE §5.1; MODELS.md E.2).

    ``num_levels`` stacked MMoE levels (MMoE eqs. 4-5), each with ``num_experts`` shared experts and one gate per
    task, and no task-specific experts (what separates it from PLE):

    * level 1: ``g^{k,1} = Σ_i softmax(W^{k,1} x)_i f_i^1(x)``;
    * level j > 1: the level's experts are shared by all branches and applied to each task branch's previous output,
      ``g^{k,j} = Σ_i softmax(W^{k,j} s)_i f_i^j(g^{k,j-1})``, evaluated as one GEMM over the T stacked branches;
    * tower k reads ``g^{k,N}``.

    [A] the selector ``s``: ``selector="input"`` (default): every gate of every level is driven by the same input
    ``x`` (our reading of "all gates share the same selector", in contrast with PLE eq. 5 where the selector is the
    branch's previous output); ``selector="branch"`` uses ``g^{k,j-1}`` as PLE does. Gates are linear + softmax
    (``gate_hidden`` adds an MLP); experts are ReLU MLPs of ``expert_hidden`` units ([A] one layer of 256, as the
    PLE paper's single-layer experts); 2 levels as every multi-level model of the paper.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_levels: int = 2,
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (256,),
        expert_dropout: float = 0.0,
        gate_hidden: Sequence[int] = (),
        selector: str = "input",
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if selector not in ("input", "branch"):
            raise ValueError(f"selector must be 'input' or 'branch', got {selector!r}")
        self.selector = selector
        self.levels = nn.ModuleList()
        self.gates = nn.ModuleList()
        d = self.input_dim
        for j in range(num_levels):
            experts = BatchedExperts(
                num_experts, d, expert_hidden, activation_name=self.activation, dropout=expert_dropout
            )
            gate_in = self.input_dim if selector == "input" or j == 0 else d
            self.levels.append(experts)
            self.gates.append(nn.ModuleList(Gate(gate_in, num_experts, hidden=gate_hidden) for _ in self.tasks))
            d = experts.output_dim
        self.build_towers(d)

    def backbone(self, inputs: EmbeddedInputs) -> list[torch.Tensor]:
        x = inputs.flat()
        t = len(self.tasks)
        branches: list[torch.Tensor] = []
        for j, (experts, gates) in enumerate(zip(self.levels, self.gates, strict=True)):
            if j == 0:
                out = experts(x)  # (n, B, h): one GEMM
                branches = [mix(g(x), out) for g in gates]
                continue
            stacked = torch.stack(branches)  # (T, B, d)
            b = stacked.shape[1]
            out = experts(stacked.reshape(t * b, -1)).view(-1, t, b, experts.output_dim)  # (n, T, B, h)
            sel = [x] * t if self.selector == "input" else branches
            branches = [mix(g(s), out[:, k]) for k, (g, s) in enumerate(zip(gates, sel, strict=True))]
        return branches
