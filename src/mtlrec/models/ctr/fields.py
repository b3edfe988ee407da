"""Field-wise interaction models: FINT, AutoInt, MaskNet and MemoNet (MODELS.md D.2-D.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.interactions import FINT, FieldSelfAttention, HashCodebook, MaskNet
from mtlrec.layers.mlp import MLP
from mtlrec.models.ctr.base import CTRInputs, CTRModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class FieldsThenDeep(nn.Module):
    """``MLP([flatten(module(E)); dense])`` (an empty ``hidden`` keeps the flattened output), optionally beside the
    first-order logit, and optionally beside a parallel ``MLP(x0)`` (``parallel_hidden``, AutoInt+)."""

    def __init__(
        self,
        module: nn.Module,
        module_out: int,
        dense_dim: int,
        hidden: Sequence[int],
        *,
        linear: bool = False,
        parallel_input: int = 0,
        parallel_hidden: Sequence[int] = (),
        **mlp_kw,
    ) -> None:
        super().__init__()
        self.module = module
        self.mlp = MLP(module_out + dense_dim, hidden, **mlp_kw)
        self.parallel = MLP(parallel_input, parallel_hidden, **mlp_kw) if parallel_hidden else None
        self.linear = linear
        self.out_dim = self.mlp.output_dim + int(linear) + (self.parallel.output_dim if self.parallel else 0)

    def interact(self, x: CTRInputs) -> torch.Tensor:
        return self.module(x.fields).flatten(1)

    def forward(self, x: CTRInputs) -> torch.Tensor:
        parts = [self.mlp(x.with_dense(self.interact(x)))]
        if self.parallel is not None:
            parts.append(self.parallel(x.flat()))
        if self.linear:
            parts.append(x.linear_logit())
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _mlp_kw(model: CTRModel, dropout: float, batch_norm: bool) -> dict:
    return {"activation_name": model.activation, "dropout": dropout, "batch_norm": batch_norm}


@register_model("fint", family="ctr", paper="Zhao et al., arXiv 2107.01999 (FINT), eqs. 3-5")
class FINTModel(CTRModel):
    """FINT: ``K`` field-aware interaction layers ``V^l = V^{l-1} ⊙ (W^{l-1} V^0) + U^{l-1} ⊙ V^{l-1}``, then
    ``ŷ = σ(DNN(flatten(V^K)))``; ``linear=True`` adds the optional first-order term. Defaults per MODELS.md D.4
    [A]: K = 3 layers, Xavier ``W``, ``U = 1``; the paper's DNN is 300-300-300."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_fint_layers: int = 3,
        dnn_hidden: Sequence[int] = (300, 300, 300),
        linear: bool = False,
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(1)
        if linear:
            self.enable_linear()
        F, D = self.num_fields, self.embedding_dim
        mk = _mlp_kw(self, dropout, batch_norm)
        self.build_networks(
            lambda: FieldsThenDeep(FINT(F, D, num_fint_layers), F * D, self.dense_dim, dnn_hidden, linear=linear, **mk)
        )


@register_model("autoint", family="ctr", paper="Song et al., CIKM'19 (AutoInt), eqs. 5-9")
class AutoInt(CTRModel):
    """AutoInt: interacting layers of multi-head self-attention over fields (eqs. 5-8), then
    ``ŷ = σ(w^T flatten(E^Res) + b)`` (eq. 9). ``dnn_hidden`` adds an MLP after the attention [A: empty by default,
    as the paper]; ``parallel_dnn_hidden`` gives AutoInt+ (a DNN on ``x0`` beside the attention output)."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_heads: int = 2,
        num_attention_layers: int = 3,
        head_dim: int | None = None,
        attention_residual: bool = True,
        dnn_hidden: Sequence[int] = (),
        parallel_dnn_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(1)
        F, D = self.num_fields, self.embedding_dim
        mk = _mlp_kw(self, dropout, batch_norm)

        def make() -> nn.Module:
            att = FieldSelfAttention(D, num_heads, num_attention_layers, head_dim, attention_residual)
            return FieldsThenDeep(
                att,
                F * att.out_dim,
                self.dense_dim,
                dnn_hidden,
                parallel_input=self.input_dim,
                parallel_hidden=parallel_dnn_hidden,
                **mk,
            )

        self.build_networks(make)


@register_model("masknet", family="ctr", paper="Wang, She, Zhang, DLP-KDD'21 (MaskNet), arXiv 2102.07619, eqs. 5-14")
class MaskNetModel(CTRModel):
    """MaskNet: SerMaskNet (``mode="serial"``) or ParaMaskNet (``mode="parallel"``, followed by ``dnn_hidden``,
    the paper's 3×400 by default) over the field embeddings; the head gives ``σ(w_0 + Σ w_i x_i)``. Paper
    defaults: 3 MaskBlocks, reduction ratio 2; [A] ``block_dim`` 64 (not stated for the blocks); serial mode
    uses no MLP after the last block unless ``dnn_hidden`` is given."""

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        mode: str = "parallel",
        num_blocks: int = 3,
        block_dim: int = 64,
        reduction_ratio: float = 2.0,
        dnn_hidden: Sequence[int] | None = None,
        layer_norm: bool = True,
        emb_layer_norm: bool = True,
        dropout: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(1)
        hidden = dnn_hidden if dnn_hidden is not None else ((400, 400, 400) if mode == "parallel" else ())
        F, D = self.num_fields, self.embedding_dim

        def make() -> nn.Module:
            net = MaskNet(
                F,
                D,
                mode,
                num_blocks,
                block_dim,
                reduction_ratio,
                hidden=hidden,
                layer_norm=layer_norm,
                emb_layer_norm=emb_layer_norm,
                dropout=dropout,
            )
            return FieldsThenDeep(net, net.out_dim, self.dense_dim, ())

        self.build_networks(make)


class MemoNetNet(FieldsThenDeep):
    """``MLP([flatten(E); flatten(Z); dense])`` with ``Z`` the HCNet memory of the sample's cross features."""

    def interact(self, x: CTRInputs) -> torch.Tensor:
        return torch.cat([x.fields.flatten(1), self.module(x.ids, x.fields)], 1)


@register_model("memonet", family="ctr", paper="Zhang et al., arXiv 2211.01334 (MemoNet / HCNet)")
class MemoNet(CTRModel):
    """MemoNet = embeddings + HCNet (multi-hash codebook of second-order cross features, see
    :class:`~mtlrec.layers.interactions.HashCodebook`) + DNN: ``ŷ = σ(w^T DNN([flatten(E); flatten(Z)]) + b)``.

    Official defaults (MODELS.md D.2): ``num_hashes`` 2, shared codebook, LMR (``restore="linear"``) or AMR
    (``"attentive"``), GAS shrinking (``shrink="global_attentive"``), DNN 400-400. [A] ``num_buckets`` defaults
    to 100 000 (the paper uses 1e6 on Criteo); field values of multi-valued/numeric fields are hashed as
    described in :func:`~mtlrec.models.ctr.base.field_ids`; the embedding ``√d`` rescaling of the TF code is not
    applied. The codebook is a separate table per task copy (``shared=False``).
    """

    needs_ids = True

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_buckets: int = 100_000,
        num_hashes: int = 2,
        restore: str = "linear",
        shrink: str = "global_attentive",
        shrink_softmax: bool = False,
        hash_share: bool = True,
        code_dim: int | None = None,
        dnn_hidden: Sequence[int] = (400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        hash_seed: int = 0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.require_fields(2)
        F, D = self.num_fields, self.embedding_dim
        mk = _mlp_kw(self, dropout, batch_norm)
        sparse = self.embedding.table.sparse

        def make() -> nn.Module:
            hc = HashCodebook(
                F,
                D,
                num_buckets,
                num_hashes,
                restore,
                shrink,
                code_dim=code_dim,
                hash_share=hash_share,
                shrink_softmax=shrink_softmax,
                sparse=sparse,
                seed=hash_seed,
            )
            return MemoNetNet(hc, F * D + hc.out_dim, self.dense_dim, dnn_hidden, **mk)

        self.build_networks(make)
