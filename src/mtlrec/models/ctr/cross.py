"""DCN, DCN-V2 and GDCN: a cross network beside or below a DNN (MODELS.md D.1, D.5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.interactions import CrossNetwork, GatedCrossNetwork
from mtlrec.layers.mlp import MLP
from mtlrec.models.ctr.base import CTRInputs, CTRModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec

STRUCTURES = ("parallel", "stacked", "cross_only")


class CrossDeepNet(nn.Module):
    """``x0 = [flatten(E); dense]`` through a cross network and a DNN, combined by ``structure``:
    ``parallel``: ``[cross(x0); MLP(x0)]``; ``stacked``: ``MLP(cross(x0))``; ``cross_only``: ``cross(x0)``.
    The task head on top gives the logit."""

    def __init__(self, cross: nn.Module, hidden: Sequence[int], structure: str, **mlp_kw) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.cross, self.structure = cross, structure
        d = cross.out_dim
        self.mlp = MLP(d, hidden, **mlp_kw) if structure != "cross_only" else None
        self.out_dim = {
            "parallel": d + (self.mlp.output_dim if self.mlp is not None else 0),
            "stacked": self.mlp.output_dim if self.mlp is not None else d,
            "cross_only": d,
        }[structure]

    def forward(self, x: CTRInputs) -> torch.Tensor:
        x0 = x.flat()
        if self.structure == "parallel":
            return torch.cat([self.cross(x0), self.mlp(x0)], 1)
        if self.structure == "stacked":
            return self.mlp(self.cross(x0))
        return self.cross(x0)


class _CrossModel(CTRModel):
    def _build(
        self, make_cross: Callable[[], nn.Module], dnn_hidden: Sequence[int], structure: str, mlp_kw: dict
    ) -> None:
        self.build_networks(lambda: CrossDeepNet(make_cross(), dnn_hidden, structure, **mlp_kw))


@register_model("dcn", family="ctr", paper="Wang et al., ADKDD'17 (Deep & Cross Network), eqs. 3-5")
class DCN(_CrossModel):
    """DCN: cross layers ``x_{l+1} = x0 x_l^T w_l + b_l + x_l`` (eq. 3) beside a DNN, combined by
    ``w^T [x_{L1}; h_{L2}] + b`` (eq. 5) with the default ``structure="parallel"``; ``"stacked"`` and
    ``"cross_only"`` are the other structures of MODELS.md D.5."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_cross_layers: int = 3,
        dnn_hidden: Sequence[int] = (256, 128),
        structure: str = "parallel",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self._build(lambda: CrossNetwork(self.input_dim, num_cross_layers, "v1"), dnn_hidden, structure, mlp_kw)


@register_model("dcnv2", family="ctr", paper="Wang et al., WWW'21 (DCN-V2), eqs. 1-3")
class DCNV2(_CrossModel):
    """DCN-V2: ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l`` (eq. 1); ``low_rank=r`` factorises ``W_l = U_l V_l^T``
    (eq. 2) and ``num_experts > 1`` gives the mixture of low-rank experts (DCN-Mix, eq. 3; FuxiCTR: r=32, E=4).
    [A] ``structure`` defaults to ``"parallel"`` (the paper reports both; FuxiCTR's default)."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        num_experts: int = 1,
        dnn_hidden: Sequence[int] = (256, 128),
        structure: str = "parallel",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self._build(
            lambda: CrossNetwork(self.input_dim, num_cross_layers, "v2", low_rank=low_rank, num_experts=num_experts),
            dnn_hidden,
            structure,
            mlp_kw,
        )


@register_model("gdcn", family="ctr", paper="Wang et al., CIKM'23 (GDCN), arXiv 2311.04635, eq. 1")
class GDCN(_CrossModel):
    """GDCN: gated cross layers ``c_{l+1} = c_0 ⊙ (W_c c_l + b) ⊙ σ(W_g c_l) + c_l`` (eq. 1) with a DNN.
    ``structure="parallel"`` is GDCN-P (``logit = w^T [GCN(c_0); DNN(c_0)]``), ``"stacked"`` is GDCN-S
    (``c_0 → GCN → DNN → logit``), ``"cross_only"`` is the GCN alone. [A] the default is GDCN-P (the paper's best
    on Criteo). FDO (field-level dimensions) is not implemented: all fields share ``embedding_dim``."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_cross_layers: int = 3,
        dnn_hidden: Sequence[int] = (400, 400, 400),
        structure: str = "parallel",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self._build(lambda: GatedCrossNetwork(self.input_dim, num_cross_layers), dnn_hidden, structure, mlp_kw)
