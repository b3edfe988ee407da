"""SNR: Sub-Network Routing (Ma, Zhao, Yi, Chen, Hong, Chi; AAAI'19; MODELS.md E.5).

The shared bottom is split into levels of sub-networks; the outputs ``u_j`` of one level reach the inputs ``v_i`` of
the next level (and, after the last level, the task towers) through binary coding variables ``z_ij`` learned with
L0 regularisation via the hard-concrete relaxation of Louizos, Welling & Kingma (ICLR'18, "Learning sparse neural
networks through L0 regularization", eqs. 9-13):

* SNR-Trans: ``v_i = Σ_j z_ij W_ij u_j`` (one transform matrix per edge);
* SNR-Aver:  ``v_i = Σ_j z_ij u_j`` (the sub-networks themselves are the MLP layers).

Hard-concrete gate (training, noise sampled): ``u ~ U(0,1)``, ``s = σ((log u − log(1−u) + log α)/β)``,
``s̄ = s(ζ−γ) + γ``, ``z = min(1, max(0, s̄))``. Test time (deterministic): ``ẑ = min(1, max(0, σ(log α)(ζ−γ)+γ))``.
Expected L0 penalty (closed form): ``λ Σ_ij σ(log α_ij − β log(−γ/ζ))``, returned as the aux loss ``"snr_l0"``.

[A] choices (MODELS.md G.14 and E.5): β = 2/3, (γ, ζ) = (−0.1, 1.1) (Louizos defaults; the SNR paper's values were not
retrieved); ``log α`` initialised to ``log(1−p)−log(p)`` + N(0, 0.01) with ``gate_init_drop`` p = 0.5 (Louizos);
one gate sample per mini-batch (``gate_sampling="batch"``, as Louizos do for weights) or one per example
(``"example"``); the sub-networks of level ``l`` are identical-shape ReLU MLPs of sizes ``subnet_hidden[l]``, every
level-0 sub-network reads the flattened embeddings; the routing after the last level feeds the task towers; in
SNR-Trans ``W_ij`` maps to the width of the receiving node's input (``trans_dim``, default: the sending level's
output width). The public MMLRec port's deviations (learned ``u``, no penalty, unregistered transforms) are *not*
reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.routing import RoutedSubnetworks
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


def _snr_kw(
    routing: str,
    num_subnets: Sequence[int],
    subnet_hidden: Sequence[Sequence[int] | int],
    trans_dim: int | None,
    dropout: float,
    gate_sampling: str,
    beta: float,
    gamma: float,
    zeta: float,
    gate_init_drop: float,
) -> dict:
    return {
        "num_subnets": list(num_subnets),
        "subnet_hidden": list(subnet_hidden),
        "routing": routing,
        "trans_dim": trans_dim,
        "dropout": dropout,
        "gate_sampling": gate_sampling,
        "gate_kw": {"beta": beta, "gamma": gamma, "zeta": zeta, "init_drop": gate_init_drop},
    }


class _SNR(MultiTaskModel):
    routing: str

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_subnets: Sequence[int] = (3, 3),
        subnet_hidden: Sequence[Sequence[int] | int] = (64, 32),
        trans_dim: int | None = None,
        subnet_dropout: float = 0.0,
        l0_weight: float = 1e-3,
        gate_sampling: str = "batch",
        beta: float = 2.0 / 3.0,
        gamma: float = -0.1,
        zeta: float = 1.1,
        gate_init_drop: float = 0.5,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.l0_weight = l0_weight
        opts = _snr_kw(
            self.routing,
            num_subnets,
            subnet_hidden,
            trans_dim,
            subnet_dropout,
            gate_sampling,
            beta,
            gamma,
            zeta,
            gate_init_drop,
        )
        self.router = RoutedSubnetworks(
            self.input_dim, num_outputs=len(self.tasks), activation_name=self.activation, **opts
        )
        self.build_towers(self.router.out_dim)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        return list(self.router(x.flat()).unbind(0))

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if self.l0_weight <= 0:
            return {}
        return {"snr_l0": self.l0_weight * self.router.expected_l0()}


@register_model("snr_trans", family="multi_task_baseline", paper="Ma et al., AAAI'19 (SNR-Trans); Louizos et al. L0")
class SNRTrans(_SNR):
    """SNR-Trans: ``v_i = Σ_j z_ij W_ij u_j`` with hard-concrete coding variables ``z`` and the expected-L0 penalty
    ``λ Σ σ(log α − β log(−γ/ζ))`` (aux loss ``snr_l0``, ``λ = l0_weight``). See the module docstring for the
    [A] choices (β = 2/3, γ = −0.1, ζ = 1.1, per-batch gate samples, levels ``num_subnets × subnet_hidden``)."""

    routing = "trans"


@register_model("snr_aver", family="multi_task_baseline", paper="Ma et al., AAAI'19 (SNR-Aver); Louizos et al. L0")
class SNRAver(_SNR):
    """SNR-Aver: ``v_i = Σ_j z_ij u_j`` (no transform; the sub-networks are the layers), with hard-concrete coding
    variables and the expected-L0 penalty (aux loss ``snr_l0``). [A] choices as in the module docstring."""

    routing = "aver"
