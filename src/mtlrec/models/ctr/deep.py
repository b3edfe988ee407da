"""DNN, Wide & Deep, NFM and xDeepFM (MODELS.md D.6-D.8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.interactions import CIN, BiInteraction
from mtlrec.layers.mlp import MLP
from mtlrec.models.ctr.base import CTRInputs, CTRModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class DeepNet(nn.Module):
    """``MLP(x0)``, optionally beside the first-order logit: ``[MLP(x0) ; Σ w_i x_i]``."""

    def __init__(self, input_dim: int, hidden: Sequence[int], *, linear: bool, **mlp_kw) -> None:
        super().__init__()
        self.mlp = MLP(input_dim, hidden, **mlp_kw)
        self.linear = linear
        self.out_dim = self.mlp.output_dim + int(linear)

    def forward(self, x: CTRInputs) -> torch.Tensor:
        h = self.mlp(x.flat())
        return torch.cat([h, x.linear_logit()], 1) if self.linear else h


@register_model("dnn", family="ctr", paper="Covington et al., RecSys'16 (YouTube DNN); the plain DNN CTR baseline")
class DNN(CTRModel):
    """``ŷ = σ(w^T MLP([flatten(E); dense]) + b)``: an MLP over the concatenated field embeddings."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        dnn_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self.build_networks(lambda: DeepNet(self.input_dim, dnn_hidden, linear=False, **mlp_kw))


@register_model("wide_deep", family="ctr", paper="Cheng et al., DLRS'16 (Wide & Deep), eq. 3")
class WideDeep(CTRModel):
    """Wide & Deep (eq. 3): ``P(y=1|x) = σ(w_wide^T [x, φ(x)] + w_deep^T a^{(l_f)} + b)``.

    [A] As in benchmark re-implementations (MODELS.md D.8) the wide part is the first-order logit over all
    features (no hand-made cross products φ) and everything trains with the same optimiser (the paper uses FTRL
    for the wide and AdaGrad for the deep part). The head ``w^T [a; Σ w_i x_i] + b`` is eq. 3 with the wide logit's
    weight folded into a learned scalar.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        dnn_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.enable_linear()
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self.build_networks(lambda: DeepNet(self.input_dim, dnn_hidden, linear=True, **mlp_kw))


class NFMNet(nn.Module):
    def __init__(
        self, dim: int, dense_dim: int, hidden: Sequence[int], *, linear: bool, bi_dropout: float, **mlp_kw
    ) -> None:
        super().__init__()
        self.bi = BiInteraction()
        self.bi_dropout = nn.Dropout(bi_dropout) if bi_dropout > 0 else nn.Identity()
        self.mlp = MLP(dim + dense_dim, hidden, **mlp_kw)
        self.linear = linear
        self.out_dim = self.mlp.output_dim + int(linear)

    def forward(self, x: CTRInputs) -> torch.Tensor:
        h = self.mlp(x.with_dense(self.bi_dropout(self.bi(x.fields))))
        return torch.cat([h, x.linear_logit()], 1) if self.linear else h


@register_model("nfm", family="ctr", paper="He & Chua, SIGIR'17 (NFM), eqs. 2-4")
class NFM(CTRModel):
    """NFM (eq. 2): ``ŷ = w_0 + Σ_i w_i x_i + h^T σ_L(W_L(…σ_1(W_1 f_BI(V_x) + b_1)…) + b_L)`` with the
    bi-interaction pooling ``f_BI`` (eq. 4, :class:`~mtlrec.layers.interactions.BiInteraction`).

    ``bi_dropout`` is the paper's dropout on ``f_BI``; ``batch_norm`` its BatchNorm in the hidden layers [A: off by
    default, as FuxiCTR]. ``linear=False`` drops the first-order term. With ``numeric_mode="dense"`` the raw numeric
    block joins ``f_BI`` at the MLP input.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        dnn_hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
        bi_dropout: float = 0.0,
        batch_norm: bool = False,
        linear: bool = True,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(2)
        if linear:
            self.enable_linear()
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        self.build_networks(
            lambda: NFMNet(
                self.embedding_dim, self.dense_dim, dnn_hidden, linear=linear, bi_dropout=bi_dropout, **mlp_kw
            )
        )


class XDeepFMNet(nn.Module):
    def __init__(self, input_dim: int, num_fields: int, dim: int, hidden: Sequence[int], cin_kw: dict, **mlp_kw):
        super().__init__()
        self.mlp = MLP(input_dim, hidden, **mlp_kw)
        self.cin = CIN(num_fields, dim, **cin_kw)
        self.out_dim = 1 + self.mlp.output_dim + self.cin.out_dim

    def forward(self, x: CTRInputs) -> torch.Tensor:
        return torch.cat([x.linear_logit(), self.mlp(x.flat()), self.cin(x.fields)], 1)


@register_model("xdeepfm", family="ctr", paper="Lian et al., KDD'18 (xDeepFM), eqs. 6-8")
class XDeepFM(CTRModel):
    """xDeepFM (eq. 8): ``ŷ = σ(w_lin^T x + w_dnn^T MLP(x0) + w_cin^T p^+ + b)``: the head over
    ``[Σ w_i x_i ; MLP(x0) ; p^+]`` is exactly this sum. CIN (eqs. 6-7) with ``cin_layers`` and ``split_half``
    (the paper's default, [A] FuxiCTR uses all maps: ``split_half=False``)."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        dnn_hidden: Sequence[int] = (256, 128),
        cin_layers: Sequence[int] = (128, 128),
        split_half: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(1)
        self.enable_linear()
        mlp_kw = {"activation_name": self.activation, "dropout": dropout, "batch_norm": batch_norm}
        cin_kw = {"layer_sizes": tuple(cin_layers), "split_half": split_half}
        self.build_networks(
            lambda: XDeepFMNet(self.input_dim, self.num_fields, self.embedding_dim, dnn_hidden, cin_kw, **mlp_kw)
        )
