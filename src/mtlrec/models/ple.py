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
from mtlrec.layers.gates import Gate, mix_groups
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class ExtractionLevel(nn.Module):
    """One CGC / PLE extraction level (PLE eqs. 2-5).

    ``forward(branches)`` takes the branches' inputs stacked, ``(T+1, B, d)`` (task branches ``x_k``, then the
    shared input), or one ``(B, d)`` input read by every branch (the first level), and returns the branch outputs
    stacked the same way (the next level's input):

    * task ``k``: ``g^k = w^k(x_k) S^k`` with ``w^k(x) = softmax(W_g^k x)`` over its own ``m_k`` experts followed by
      the ``m_s`` shared experts (eqs. 2-4); the selector ``x_k`` is the branch's input (PLE eq. 5);
    * shared branch (only with ``shared_gate=True``, i.e. every level but the last): a gate over ALL
      ``T·m_k + m_s`` experts of the level, selector = the shared input; without it the output is ``(T, B, h)``.

    Task-``k`` experts take ``x_k``; shared experts take the shared input. All gates' mixes are one
    :func:`~mtlrec.layers.gates.mix_groups` over the level's expert block.
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
        # the experts each gate mixes: task k's own, then the shared ones; the shared gate all of them
        shared = list(range(num_tasks * num_specific, self.num_experts))
        self.groups = [list(range(k * num_specific, (k + 1) * num_specific)) + shared for k in range(num_tasks)]
        if shared_gate:
            self.groups.append(list(range(self.num_experts)))

    def forward(self, branches: torch.Tensor) -> torch.Tensor:
        """``branches``: ``(B, d)`` when every branch reads the same input (level 1), else ``(T+1, B, d)`` (task
        branches, then the shared one). Returns the level's branch outputs stacked, ``(T+1, B, h)`` with the shared
        gate, ``(T, B, h)`` without."""
        T = self.num_tasks
        if branches.dim() == 2:
            experts = self.experts(branches)  # one GEMM for every expert of the level
            selectors = [branches] * (T + 1)
        else:
            stacked = branches if self.one_expert_per_branch else branches.index_select(0, self.expert_branch)
            experts = self.experts(stacked)  # (n, B, h) → one baddbmm
            selectors = list(branches.unbind(0))
        gates = [*self.task_gates, *([self.shared_gate] if self.shared_gate is not None else [])]
        weights = [gate(x) for gate, x in zip(gates, selectors[: len(gates)], strict=True)]
        return mix_groups(weights, experts, self.groups)


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
        branches = to_autocast(inputs.flat())  # read by every gate and expert of level 1: cast once under autocast
        for level in self.levels:
            branches = level(branches)
        return list(branches.unbind(0))


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
