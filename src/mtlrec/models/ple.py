"""CGC and PLE: Customized Gate Control and Progressive Layered Extraction (Tang et al., RecSys'20; MODELS.md E.2).

One extraction level holds ``m_k`` task-specific experts per task and ``m_s`` shared experts, all stored in ONE
:class:`BatchedExperts` (stacked weights: at the first level all experts see the same input, so they are a single
GEMM; at later levels each branch has its own input and the level is one ``baddbmm``). Expert order inside a level
is ``[task 1 experts, ..., task T experts, shared experts]``, which is also the order of the shared gate's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.autocast import to_autocast
from mtlrec.layers.experts import BatchedExperts
from mtlrec.layers.gates import Gate, mix
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class ExtractionLevel(nn.Module):
    """One CGC / PLE extraction level (PLE eqs. 2-5).

    ``forward(task_inputs, shared_input)`` takes one ``(B, d)`` input per task branch plus the shared branch's
    input (all the same tensor at the first level) and returns ``(task_outputs, shared_output)``:

    * task ``k``: ``g^k = w^k(x_k) S^k`` with ``w^k(x) = softmax(W_g^k x)`` over its own ``m_k`` experts followed by
      the ``m_s`` shared experts (eqs. 2-4); the selector ``x_k`` is the branch's input (PLE eq. 5);
    * shared branch (only with ``shared_gate=True``, i.e. every level but the last): a gate over ALL
      ``T·m_k + m_s`` experts of the level, selector = the shared input; ``shared_output`` is ``None`` without it.

    Task-``k`` experts take ``x_k``; shared experts take the shared input.
    """

    def __init__(
        self,
        num_tasks: int,
        input_dim: int,
        *,
        num_specific: int,
        num_shared: int,
        expert_hidden: Sequence[int],
        shared_gate: bool,
        gate_hidden: Sequence[int] = (),
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_specific < 0 or num_shared < 0 or num_specific + num_shared == 0:
            raise ValueError(
                f"CGC/PLE needs experts: num_specific_experts={num_specific}, num_shared_experts={num_shared}"
            )
        if shared_gate and num_shared == 0:
            raise ValueError("PLE levels below the last need num_shared_experts > 0 (the shared branch)")
        self.num_tasks = num_tasks
        self.num_specific = num_specific
        self.num_shared = num_shared
        self.num_experts = num_tasks * num_specific + num_shared
        self.experts = BatchedExperts(
            self.num_experts, input_dim, expert_hidden, activation_name=activation_name, dropout=dropout
        )
        self.output_dim = self.experts.output_dim
        self.task_gates = nn.ModuleList(
            Gate(input_dim, num_specific + num_shared, hidden=gate_hidden) for _ in range(num_tasks)
        )
        self.shared_gate = Gate(input_dim, self.num_experts, hidden=gate_hidden) if shared_gate else None
        # expert i reads branch group[i] (0..T-1: task branches, T: shared branch)
        group = torch.cat(
            [torch.arange(num_tasks).repeat_interleave(num_specific), torch.full((num_shared,), num_tasks)]
        )
        self.register_buffer("expert_branch", group, persistent=False)
        # one expert per branch (the default sizes): the stacked branches are the experts' inputs as they are, with
        # no gathered copy (and no zero-filled buffer for its gradient)
        self.one_expert_per_branch = torch.equal(group, torch.arange(self.num_experts))

    def forward(
        self, task_inputs: Sequence[torch.Tensor], shared_input: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        same = all(x is shared_input for x in task_inputs)
        if same:
            experts = self.experts(shared_input)  # one GEMM for every expert of the level
        else:
            branches = torch.stack([*task_inputs, shared_input])  # (T+1, B, d)
            if not self.one_expert_per_branch:
                branches = branches.index_select(0, self.expert_branch)
            experts = self.experts(branches)  # (n, B, d) → one baddbmm
        m, T = self.num_specific, self.num_tasks
        # split, not sliced: the gradients of the parts meet in one concatenation, where every slice would
        # back-propagate through its own zero-filled (n, B, h) buffer
        *specific, shared = experts.split([m] * T + [self.num_shared])
        outputs = []
        for k, (gate, x) in enumerate(zip(self.task_gates, task_inputs, strict=True)):
            w = gate(x)
            out = mix(w[:, m:], shared) if self.num_shared else 0.0
            if m:
                out = out + mix(w[:, :m], specific[k])
            outputs.append(out)
        shared_out = mix(self.shared_gate(shared_input), experts) if self.shared_gate is not None else None
        return outputs, shared_out


class _ExtractionNetwork(MultiTaskModel):
    """``num_levels`` stacked extraction levels feeding per-task towers; see :class:`PLE`."""

    num_levels: int

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_shared_experts: int = 1,
        num_specific_experts: int = 1,
        expert_hidden: Sequence[int] = (256,),
        expert_dropout: float = 0.0,
        gate_hidden: Sequence[int] = (),
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")
        self.levels = nn.ModuleList()
        d = self.input_dim
        for j in range(self.num_levels):
            level = ExtractionLevel(
                len(self.tasks),
                d,
                num_specific=num_specific_experts,
                num_shared=num_shared_experts,
                expert_hidden=expert_hidden,
                shared_gate=j < self.num_levels - 1,
                gate_hidden=gate_hidden,
                activation_name=self.activation,
                dropout=expert_dropout,
            )
            self.levels.append(level)
            d = level.output_dim
        self.build_towers(d)

    def backbone(self, inputs: EmbeddedInputs) -> list[torch.Tensor]:
        x = to_autocast(inputs.flat())  # read by every gate and expert of level 1: cast once under autocast
        task_x: list[torch.Tensor] = [x] * len(self.tasks)
        shared_x: torch.Tensor | None = x
        for level in self.levels:
            task_x, shared_x = level(task_x, shared_x)
        return task_x


@register_model("ple", family="multi_task_baseline", paper="Tang et al., RecSys'20 (PLE), eqs. 2-6")
class PLE(_ExtractionNetwork):
    """Progressive Layered Extraction (PLE §4.3, eq. 5): ``g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x)) S^{k,j}(x)``,
    ``y^k = t^k(g^{k,N}(x))``.

    * ``num_levels`` (N, default 2 as in every multi-level model of the paper) extraction levels
      (:class:`ExtractionLevel`); level 1 is CGC on the input ``x``.
    * The gate selector at level ``j`` is the previous level's fused output of the same branch (eq. 5); the
      task-``k`` experts of level ``j`` take ``g^{k,j-1}`` and the shared experts take ``g^{s,j-1}`` ([C] the
      DeepCTR-Torch / FuxiCTR / MTReclib convention; the paper states it only for the selector).
    * Every level but the last has a shared gate over ALL experts of the level (task-specific and shared); its
      output feeds the next level's shared experts. The last level has no shared gate.
    * Each task has ``num_specific_experts`` experts and the shared branch ``num_shared_experts`` experts at every
      level (the shared count really is ``num_shared_experts``: DeepCTR-Torch's ``ple.py`` builds them with the
      specific count, a bug not repeated here).
    * Gates: a linear layer + softmax (``W_g^k ∈ R^{(m_k+m_s)×d}``); ``gate_hidden`` adds an MLP ([A] off).
    * Experts: ``expert_hidden`` ReLU MLPs; [A] default one layer of 256 units (the paper's industrial setting
      uses single-layer experts; sizes are not given).
    * Towers: ``tower_hidden`` (the paper uses [256, 128, 64] with ReLU on the public data sets).
    * The joint loss over heterogeneous sample spaces (eq. 6) is the base class's masked task loss; the dynamic
      weights ``ω_k^{(t)} = ω_{k,0} γ_k^t`` belong to the trainer's weighting strategies.
    """

    def __init__(self, layout: FeatureLayout, tasks: Sequence[TaskSpec], *, num_levels: int = 2, **kw) -> None:
        self.num_levels = num_levels
        super().__init__(layout, tasks, **kw)


@register_model("cgc", family="multi_task_baseline", paper="Tang et al., RecSys'20 (CGC), eqs. 2-4")
class CGC(_ExtractionNetwork):
    """Customized Gate Control (PLE paper §4.2, eqs. 2-4), i.e. single-level PLE.

    ``y^k(x) = t^k(g^k(x))``, ``g^k(x) = w^k(x) S^k(x)``, ``w^k(x) = softmax(W_g^k x)``, where
    ``S^k(x) = [E_(k,1) … E_(k,m_k), E_(s,1) … E_(s,m_s)]`` stacks task ``k``'s ``num_specific_experts`` experts and
    the ``num_shared_experts`` shared experts. No shared gate (nothing reads it). Same [A] choices as :class:`PLE`:
    linear gates (``gate_hidden`` adds an MLP), single-layer experts of 256 units by default.
    """

    num_levels = 1
