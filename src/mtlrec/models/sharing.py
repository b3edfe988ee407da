"""Classic parameter-sharing baselines of the PLE paper (Tang et al., RecSys'20, §5.1 and Fig. 1; MODELS.md E.2,
E.6, E.7): hard parameter sharing, Cross-Stitch, Sluice networks, asymmetric sharing and customized sharing.

Per-task networks ("columns") are stored as :class:`BatchedExperts` with one expert per task and one hidden layer
per module, so a layer of all T columns is one GEMM (shared input) or one ``baddbmm`` (per-task inputs) and the
mixing units act on the stacked ``(T, B, H)`` hidden states without a loop over tasks or rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.experts import BatchedExperts
from mtlrec.layers.mlp import MLP
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.models.shared_bottom import SharedBottom
from mtlrec.schema import TaskSpec


@register_model("hard_sharing", family="multi_task_baseline", paper="Caruana 1997; PLE (RecSys'20) Fig. 1a")
class HardSharing(SharedBottom):
    """Hard parameter sharing (PLE §5.1 "Hard Parameter Sharing", Fig. 1a): the SAME model as ``shared_bottom``
    (``y_k = h^k(f(x))``, MMoE eq. 1), registered under the PLE paper's name; parameters are identical."""


def _columns(num_tasks: int, input_dim: int, hidden: Sequence[int], activation: str, dropout: float) -> nn.ModuleList:
    """One :class:`BatchedExperts` per layer holding that layer of all T task columns."""
    layers, d = nn.ModuleList(), input_dim
    for h in hidden:
        layers.append(BatchedExperts(num_tasks, d, [h], activation_name=activation, dropout=dropout))
        d = h
    return layers


class CrossStitchUnit(nn.Module):
    """Cross-stitch unit (Misra et al., CVPR'16, eq. 1): ``x̃_k = Σ_j α_kj x_j`` over the T task columns.

    ``mode`` ([A], MODELS.md E.6): ``"unit"`` (default) one T×T matrix per hidden unit, the MLP analogue of the
    paper's one α per channel; ``"layer"`` one T×T matrix for the whole layer; ``"full"`` a (T·H)×(T·H) matrix
    (MMLRec's variant) initialised to ``α_init ⊗ I_H`` so it starts as the per-unit unit. Init: ``α_S = self_weight``
    on the diagonal and ``(1 − α_S)/(T − 1)`` off it (paper: (0.9, 0.1) for two tasks; rows sum to 1).
    ``forward``: ``(T, B, H)`` → ``(T, B, H)``.
    """

    def __init__(self, num_tasks: int, width: int, *, mode: str = "unit", self_weight: float = 0.9) -> None:
        super().__init__()
        if mode not in ("unit", "layer", "full"):
            raise ValueError(f"cross-stitch mode must be 'unit', 'layer' or 'full', got {mode!r}")
        self.mode, self.num_tasks, self.width = mode, num_tasks, width
        off = (1.0 - self_weight) / (num_tasks - 1) if num_tasks > 1 else 0.0
        base = torch.full((num_tasks, num_tasks), off)
        base.fill_diagonal_(self_weight if num_tasks > 1 else 1.0)
        if mode == "unit":
            init = base.expand(width, num_tasks, num_tasks).clone()
        elif mode == "layer":
            init = base
        else:
            init = torch.kron(base, torch.eye(width))
        self.alpha = nn.Parameter(init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "unit":  # Σ_j α[u,k,j] h[j,:,u] as a broadcast product (T² B H flops; no batched GEMMs)
            return (self.alpha.permute(1, 2, 0).unsqueeze(2) * h.unsqueeze(0)).sum(1)
        if self.mode == "layer":
            return torch.einsum("kj,jbh->kbh", self.alpha, h)
        t, b, w = h.shape
        mixed = h.permute(1, 0, 2).reshape(b, t * w) @ self.alpha.T
        return mixed.view(b, t, w).permute(1, 0, 2)


@register_model("cross_stitch", family="multi_task_baseline", paper="Misra et al., CVPR'16, eq. 1 (cross-stitch)")
class CrossStitch(MultiTaskModel):
    """Cross-Stitch networks (Misra, Shrivastava, Gupta, Hebert, CVPR'16; MODELS.md E.6).

    One MLP column per task (``column_hidden`` units per layer, all columns read the shared field embeddings ``x``);
    after every hidden layer a :class:`CrossStitchUnit` mixes the columns' hidden units,
    ``[x̃_A; x̃_B] = [[α_AA, α_AB], [α_BA, α_BB]] [x_A; x_B]`` (eq. 1), and the stitched output of column k feeds
    the next layer of column k; the last stitched output is task k's tower input.

    [A] choices: ``stitch_mode`` ``"unit"`` (one T×T α per hidden unit; ``"layer"``, ``"full"``); α init
    ``stitch_self`` 0.9 / off-diagonal 0.1 (the paper's (α_S, α_D)); the embedding table is shared by all columns
    (recommendation practice; the paper's columns are whole CNNs). The paper's 10²–10³ lr multiplier on α is not
    applied (one lr for every dense parameter).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        column_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        stitch_mode: str = "unit",
        stitch_self: float = 0.9,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        if not column_hidden:
            raise ValueError("cross_stitch needs at least one hidden layer (column_hidden)")
        t = len(self.tasks)
        self.columns = _columns(t, self.input_dim, column_hidden, self.activation, dropout)
        self.stitches = nn.ModuleList(
            CrossStitchUnit(t, h, mode=stitch_mode, self_weight=stitch_self) for h in column_hidden
        )
        self.build_towers(column_hidden[-1])

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h: torch.Tensor = x.flat()
        for layer, stitch in zip(self.columns, self.stitches, strict=True):
            h = stitch(layer(h))
        return list(h.unbind(0))


@register_model("sluice", family="multi_task_baseline", paper="Ruder et al., AAAI'19 (arXiv 1705.08142)")
class Sluice(MultiTaskModel):
    """Sluice networks (Ruder, Bingel, Augenstein, Søgaard, AAAI'19; MODELS.md E.7 [M]).

    One MLP column per task. Layer ``l`` of every column is split into ``num_subspaces`` subspaces of
    ``H/num_subspaces`` units; a learned ``α_l`` of size ``(T·S)×(T·S)`` linearly mixes ALL tasks' subspaces
    (``[h̃_{A,l}; h̃_{B,l}] = α_l [h_{A,l,1}, h_{A,l,2}, h_{B,l,1}, h_{B,l,2}]``) to form the next layer's input.
    A per-task ``β_k`` over the layers gives the tower input ``h̃_k = Σ_l β_{k,l} h̃_{k,l}`` (the paper's
    hierarchical "skip" combination). The subspace orthogonality penalty
    ``L_c = Σ_k Σ_l Σ_{s<r} ‖G_{k,l,s}^T G_{k,l,r}‖_F²`` (``G_{k,l,s}``: the columns of layer l's weight that
    produce subspace s of task k) is added as the aux loss ``sluice_orthogonality`` with weight ``lambda_c``.

    [A] choices (MODELS.md E.7): 2 subspaces of H/2; α init identity + ``alpha_off`` (0.1) off the diagonal;
    β init uniform 1/L; ``lambda_c`` 1e-3; β mixes the α-mixed layer outputs; ``beta_mode="sum"`` needs equal
    layer widths (default ``column_hidden`` (128, 128)), ``"concat"`` concatenates the β-scaled layer outputs
    instead (any widths).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        column_hidden: Sequence[int] = (128, 128),
        dropout: float = 0.0,
        num_subspaces: int = 2,
        alpha_off: float = 0.1,
        beta_mode: str = "sum",
        lambda_c: float = 1e-3,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        hidden = list(column_hidden)
        if not hidden:
            raise ValueError("sluice needs at least one hidden layer (column_hidden)")
        if any(h % num_subspaces for h in hidden):
            raise ValueError(f"every column_hidden size must be divisible by num_subspaces={num_subspaces}")
        if beta_mode not in ("sum", "concat"):
            raise ValueError(f"beta_mode must be 'sum' or 'concat', got {beta_mode!r}")
        if beta_mode == "sum" and len(set(hidden)) > 1:
            raise ValueError(f"beta_mode='sum' needs equal column_hidden sizes, got {hidden}; use beta_mode='concat'")
        t, s = len(self.tasks), num_subspaces
        self.num_subspaces, self.beta_mode, self.lambda_c = s, beta_mode, lambda_c
        self.columns = _columns(t, self.input_dim, hidden, self.activation, dropout)
        init = torch.full((t * s, t * s), alpha_off)
        init.fill_diagonal_(1.0)
        self.alphas = nn.ParameterList(nn.Parameter(init.clone()) for _ in hidden)
        self.beta = nn.Parameter(torch.full((t, len(hidden)), 1.0 / len(hidden)))
        self.build_towers(hidden[-1] if beta_mode == "sum" else sum(hidden))

    def _mix(self, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        t, b, w = h.shape
        sub = h.view(t, b, self.num_subspaces, w // self.num_subspaces).permute(0, 2, 1, 3)  # (T, S, B, w/S)
        sub = sub.reshape(t * self.num_subspaces, b, w // self.num_subspaces)
        mixed = torch.einsum("ij,jbh->ibh", alpha, sub)
        return mixed.view(t, self.num_subspaces, b, -1).permute(0, 2, 1, 3).reshape(t, b, w)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h: torch.Tensor = x.flat()
        outs = []
        for layer, alpha in zip(self.columns, self.alphas, strict=True):
            h = self._mix(layer(h), alpha)
            outs.append(h)
        if self.beta_mode == "sum":
            z = torch.einsum("tl,ltbh->tbh", self.beta, torch.stack(outs))
        else:
            z = torch.cat([o * self.beta[:, i, None, None] for i, o in enumerate(outs)], dim=-1)
        return list(z.unbind(0))

    def orthogonality(self) -> torch.Tensor:
        """``Σ_k Σ_l Σ_{s<r} ‖G_{k,l,s}^T G_{k,l,r}‖_F²``."""
        s = self.num_subspaces
        total = torch.zeros(())
        pairs = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
        for layer in self.columns:
            w = layer.weights[0]  # (T, d_in, H)
            g = w.view(w.shape[0], w.shape[1], s, -1)  # (T, d_in, S, H/S)
            gram = torch.einsum("tdsi,tdrj->tsrij", g, g)  # (T, S, S, H/S, H/S)
            total = total + gram.pow(2).sum(dim=(-1, -2))[:, pairs].sum()
        return total

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if self.lambda_c <= 0 or not self.training:
            return {}
        return {"sluice_orthogonality": self.lambda_c * self.orthogonality()}


@register_model("asymmetric_sharing", family="multi_task_baseline", paper="PLE (Tang et al., RecSys'20) Fig. 1b")
class AsymmetricSharing(MultiTaskModel):
    """Asymmetric sharing (PLE §2 and Fig. 1b; MODELS.md E.2): every task has its own bottom MLP; bottom layers are
    shared asymmetrically, i.e. a task's tower also reads the bottoms of the tasks it depends on, fused by
    concatenation, sum or average pooling.

    [A] choices (the paper gives no rule for "which task's bottom is shared"): by default task k reads its own
    bottom and those of all EARLIER tasks in the task order (e.g. purchase reads click's bottom, click reads only
    its own), matching the usual sequential dependence; ``share_from`` ({task: [source tasks]}) sets any relation
    (its own bottom is always included first). ``fusion``: ``"concat"`` (default), ``"sum"`` or ``"mean"``.
    Gradients flow through the shared bottoms (no stop-gradient).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        bottom_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        share_from: dict[str, Sequence[str]] | None = None,
        fusion: str = "concat",
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        if fusion not in ("concat", "sum", "mean"):
            raise ValueError(f"fusion must be 'concat', 'sum' or 'mean', got {fusion!r}")
        names = self.task_names
        if share_from is None:
            share_from = {t: names[:k] for k, t in enumerate(names)}
        unknown = {s for v in share_from.values() for s in v} | set(share_from)
        unknown -= set(names)
        if unknown:
            raise ValueError(f"share_from names unknown tasks {sorted(unknown)}; tasks are {names}")
        self.sources = [[k] + [names.index(s) for s in share_from.get(t, []) if s != t] for k, t in enumerate(names)]
        self.fusion = fusion
        self.bottoms = BatchedExperts(
            len(names), self.input_dim, bottom_hidden, activation_name=self.activation, dropout=dropout
        )
        h = self.bottoms.output_dim
        self.build_towers([h * len(src) if fusion == "concat" else h for src in self.sources])

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        b = self.bottoms(x.flat())  # (T, B, h)
        out = []
        for src in self.sources:
            parts = b[src]  # (len(src), B, h)
            if self.fusion == "concat":
                out.append(parts.permute(1, 0, 2).flatten(1))
            else:
                out.append(parts.sum(0) if self.fusion == "sum" else parts.mean(0))
        return out


@register_model("customized_sharing", family="multi_task_baseline", paper="PLE (Tang et al., RecSys'20) Fig. 1c")
class CustomizedSharing(MultiTaskModel):
    """Customized sharing (PLE §2 and Fig. 1c; MODELS.md E.2): a shared bottom MLP and one task-specific bottom
    MLP per task; task k's tower reads ``[f_shared(x); f_k(x)]`` (concatenation).

    The task-specific bottoms are one :class:`BatchedExperts` (one GEMM). :meth:`shared_parameters` is the shared
    bottom only. [A] sizes: ``shared_hidden`` (256, 128) and ``specific_hidden`` (128, 64).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        shared_hidden: Sequence[int] = (256, 128),
        specific_hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, **kw)
        self.shared_bottom = MLP(self.input_dim, shared_hidden, activation_name=self.activation, dropout=dropout)
        self.specific_bottoms = BatchedExperts(
            len(self.tasks), self.input_dim, specific_hidden, activation_name=self.activation, dropout=dropout
        )
        self.build_towers(self.shared_bottom.output_dim + self.specific_bottoms.output_dim)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        flat = x.flat()
        shared = self.shared_bottom(flat)
        return [torch.cat([shared, s], dim=-1) for s in self.specific_bottoms(flat).unbind(0)]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.shared_bottom.parameters() if p.requires_grad]
