"""PHN, MT-PHN and DEPHN (MODELS.md Part A): parallel heterogeneous interaction networks with soft selection gating.

* SSG (:class:`~mtlrec.layers.selection.SoftSelectionGating`), DEPHN eq. (1): ``E_sg^m = G^m ⊙ E_SA + (1 − G^m) ⊙ E`` per structure ``m``.
* ``phn`` — PHN (arXiv 2206.09184, A.2): Cross, FINT and DNN in parallel on their SSG outputs, trainable residual link.
* ``mt_phn`` — MT-PHN (DEPHN §IV-B, A.4, Table I): MMoE whose experts are the heterogeneous PHN modules.
* ``dephn`` — DEPHN (A.3): DNN public experts, Cross + FINT private experts per task, explicit mapping (RM/TM) of
  public outputs, trainable value gates (TVG, :class:`~mtlrec.layers.gates.ValueGate`) with the virtual gradient
  (eqs. 8-9).

Every model here ends in a linear head by default (``tower_hidden=()``), so the logit of task t is
``Σ_{k,p} G_kp^t W_kp^t·f_p(e_pub^k) + Σ_k' W_k'^t·e_pri^k' + b_t``: eqs. (4)-(5) with the public and private parts
added before one sigmoid ([A] fix of eq. 6, MODELS.md G.1). ``tower_hidden`` turns the linear head into an MLP tower
([A] option; eq. 7 then changes form, VG still scales the gate gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.layers import aligned
from mtlrec.layers.autocast import to_autocast
from mtlrec.layers.experts import BatchedExperts
from mtlrec.layers.folded_gates import folded_first_layers
from mtlrec.layers.gates import Gate, ValueGate
from mtlrec.layers.interactions.cross import CrossNetwork
from mtlrec.layers.interactions.fint import FINT
from mtlrec.layers.mappings import MAPPINGS, stack_mappings
from mtlrec.layers.mlp import MLP
from mtlrec.layers.selection import make_ssg
from mtlrec.models.base import EmbeddedInputs, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


def _flat(fields: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
    x = fields.flatten(1)
    return x if dense is None else torch.cat([x, dense.to(x.dtype)], 1)


# ---- PHN ------------------------------------------------------------------------------------------------------
class PHNBlock(nn.Module):
    """One PHN network: SSG → {CrossNet, FINT, DNN} in parallel → ``[λ_CN h_CN ‖ λ_FI h_FI ‖ λ_DNN h_DNN]``.

    With a linear head this is ``logit = b + Σ_m λ_m w_mᵀ h_m`` (A.2 [A]: trainable scalars λ_m, init 1/3, the
    "residual link with trainable parameters"). ``residual="skip"`` is the other reading: ``h_m = module(x_m) +
    λ_m x_m`` (the DNN's input projected to its width by a bias-free linear map).
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        dense_dim: int,
        *,
        cross_layers: int,
        cross_variant: str,
        fint_layers: int,
        dnn_hidden: Sequence[int],
        activation: str,
        residual: str,
        use_ssg: bool,
        ssg_parametrization: str,
        attention_heads: int,
    ) -> None:
        super().__init__()
        if residual not in ("scalar", "skip"):
            raise ValueError(f"residual must be 'scalar' or 'skip', got {residual!r}")
        self.residual = residual
        flat_dim = num_fields * dim + dense_dim
        self.ssg = make_ssg(use_ssg, num_fields, dim, ssg_parametrization, attention_heads)
        self.cross = CrossNetwork(flat_dim, num_layers=cross_layers, variant=cross_variant)
        self.fint = FINT(num_fields, dim, num_layers=fint_layers)
        self.dnn = MLP(flat_dim, dnn_hidden, activation_name=activation)
        self.lam = nn.Parameter(torch.full((3,), 1.0 / 3.0))
        self.dnn_skip = aligned.Linear(flat_dim, self.dnn.output_dim, bias=False) if residual == "skip" else None
        self.output_dim = 2 * flat_dim - dense_dim + self.dnn.output_dim

    def forward(self, fields: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        e_cn, e_fi, e_dnn = self.ssg(fields)
        x_cn, x_dnn = _flat(e_cn, dense), _flat(e_dnn, dense)
        h_cn, h_fi, h_dnn = self.cross(x_cn), self.fint(e_fi).flatten(1), self.dnn(x_dnn)
        if self.residual == "scalar":
            return torch.cat([self.lam[0] * h_cn, self.lam[1] * h_fi, self.lam[2] * h_dnn], 1)
        return torch.cat(
            [
                h_cn + self.lam[0] * x_cn,
                h_fi + self.lam[1] * e_fi.flatten(1),
                h_dnn + self.lam[2] * self.dnn_skip(x_dnn),
            ],
            1,
        )


@register_model("phn", family="ctr", paper="PHN (arXiv 2206.09184); DEPHN eq. 1, Fig. 3a")
class PHN(MultiTaskModel):
    """Parallel Heterogeneous Network: Cross (DCN-v2), FINT and DNN in parallel, each on its own SSG output
    (DEPHN eq. 1), combined by a trainable residual link (MODELS.md A.2, every detail [A]: only the abstract is
    available).

    ``shared=False`` (default, like the other CTR models): one PHN per task with its own embeddings (disjoint
    slices of the fused table, as :class:`~mtlrec.models.shared_bottom.SingleTask`); ``True``: one shared PHN
    whose output feeds every task's head. [A] choices: ``residual`` (``scalar`` λ_m per module logit, init 1/3;
    ``skip``), ``cross_variant`` (``v2``), ``ssg_parametrization`` (``sigmoid``), linear head (``tower_hidden=()``).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        shared: bool = False,
        cross_layers: int = 3,
        cross_variant: str = "v2",
        fint_layers: int = 3,
        dnn_hidden: Sequence[int] = (256, 128),
        residual: str = "scalar",
        use_ssg: bool = True,
        ssg_parametrization: str = "sigmoid",
        attention_heads: int = 2,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (),
        **kw: Any,
    ) -> None:
        copies = 1 if shared else len(tasks)
        super().__init__(layout, tasks, embedding_copies=copies, tower_hidden=tower_hidden, **kw)
        self.shared = shared
        block = dict(
            cross_layers=cross_layers,
            cross_variant=cross_variant,
            fint_layers=fint_layers,
            dnn_hidden=dnn_hidden,
            activation=self.activation,
            residual=residual,
            use_ssg=use_ssg,
            ssg_parametrization=ssg_parametrization,
            attention_heads=attention_heads,
        )
        self.blocks = nn.ModuleList(
            PHNBlock(self.num_fields, self.embedding_dim, self.dense_dim, **block) for _ in range(copies)
        )
        self.build_towers(self.blocks[0].output_dim)

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        if self.shared:
            return [self.blocks[0](x.fields, x.dense)] * len(self.tasks)
        slices = x.fields.split(self.embedding_dim, dim=-1)
        return [b(s, x.dense) for b, s in zip(self.blocks, slices, strict=True)]


def _concat(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """``torch.cat(parts, 1)`` without copying a single part; None for no parts."""
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


# ---- MT-PHN / DEPHN -----------------------------------------------------------------------------------------------
class HeterogeneousMTL(MultiTaskModel):
    """Shared machinery of MT-PHN and DEPHN (A.3.8 skeleton, vectorised).

    SSG (one gate per structure over one shared self-attention, eq. 1) → public experts (a block of ``K`` DNN
    experts evaluated as one batched product, and/or one Cross and one FINT expert) → explicit mappings
    ``f_p`` of each public expert's activations → one gate per task over the ``(expert, mapping)`` pairs → task t's
    head input ``[G_kp^t f_p(e_pub^k) for all k, p] ‖ [private experts of t]``: with the linear head, eqs. (4)+(5)
    with the logits added ([A] fix of eq. 6). Private experts per task are Cross/FINT and/or DNN.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        public: Sequence[str],
        private: Sequence[str],
        num_dnn_experts: int,
        dnn_hidden: Sequence[int],
        cross_layers: int,
        cross_variant: str,
        fint_layers: int,
        mappings: Sequence[str],
        gate: str,
        tvg_parametrization: str,
        use_ssg: bool,
        ssg_parametrization: str,
        attention_heads: int,
        extra_private_dcn_v1: bool = False,
        fold_gates: bool = False,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (),
        **kw: Any,
    ) -> None:
        super().__init__(layout, tasks, tower_hidden=tower_hidden, **kw)
        self.fold_gates = fold_gates
        unknown = [m for m in mappings if m not in MAPPINGS]
        if unknown or not mappings:
            raise ValueError(f"unknown mappings {unknown}; choose a non-empty subset of {sorted(MAPPINGS)}")
        if gate not in ("tvg", "mg"):
            raise ValueError(f"gate must be 'tvg' or 'mg', got {gate!r}")
        F, D, n_dense = self.num_fields, self.embedding_dim, self.dense_dim
        flat_dim = F * D + n_dense
        self.public_kinds, self.private_kinds = list(public), list(private)
        self.mapping_names = list(mappings)
        self.gate_kind = gate
        self.ssg = make_ssg(use_ssg, F, D, ssg_parametrization, attention_heads)

        # public experts: one block per kind, each (B, K_kind, H_kind)
        self.public = nn.ModuleDict()
        widths = {}
        for kind in self.public_kinds:
            if kind == "dnn":
                self.public[kind] = BatchedExperts(
                    num_dnn_experts, flat_dim, dnn_hidden, activation_name=self.activation
                )
                widths[kind] = (num_dnn_experts, self.public[kind].output_dim)
            elif kind == "cross":
                self.public[kind] = CrossNetwork(flat_dim, num_layers=cross_layers, variant=cross_variant)
                widths[kind] = (1, flat_dim)
            elif kind == "fint":
                self.public[kind] = FINT(F, D, num_layers=fint_layers)
                widths[kind] = (1, F * D)
            else:
                raise ValueError(f"unknown expert kind {kind!r}")
        self.public_widths = widths
        self.expert_names = [
            f"{kind}{i}" if widths[kind][0] > 1 else kind for kind in self.public_kinds for i in range(widths[kind][0])
        ]
        self.num_public = len(self.expert_names)
        P = len(self.mapping_names)
        n_gate = self.num_public * P
        if gate == "tvg":
            self.gates = nn.ModuleList(ValueGate(n_gate, parametrization=tvg_parametrization) for _ in self.tasks)
        else:
            self.gates = nn.ModuleList(Gate(self.input_dim, n_gate) for _ in self.tasks)
        self.public_dim = P * sum(k * h for k, h in widths.values())

        # private experts of each task
        def private_set() -> nn.ModuleDict:
            mods = nn.ModuleDict()
            for kind in self.private_kinds:
                if kind == "dnn":
                    mods[kind] = MLP(flat_dim, dnn_hidden, activation_name=self.activation)
                elif kind == "cross":
                    mods[kind] = CrossNetwork(flat_dim, num_layers=cross_layers, variant=cross_variant)
                elif kind == "fint":
                    mods[kind] = FINT(F, D, num_layers=fint_layers)
                else:
                    raise ValueError(f"unknown expert kind {kind!r}")
            if extra_private_dcn_v1:
                mods["cross_v1"] = CrossNetwork(flat_dim, num_layers=cross_layers, variant="v1")
            return mods

        self.private = nn.ModuleList(private_set() for _ in self.tasks)
        pri_width = {
            "dnn": list(dnn_hidden)[-1] if dnn_hidden else flat_dim,
            "cross": flat_dim,
            "cross_v1": flat_dim,
            "fint": F * D,
        }
        self.private_dim = sum(pri_width[k] for k in self.private[0]) if len(self.private) else 0
        self.build_towers(self.public_dim + self.private_dim)

    # -- pieces ------------------------------------------------------------------------------------------------
    def _structure_inputs(self, x: EmbeddedInputs) -> dict[str, torch.Tensor]:
        e_cn, e_fi, e_dnn = self.ssg(x.fields)
        x_cn = _flat(e_cn, x.dense)  # both cross variants read the same flat input: one concatenation
        return {"cross": x_cn, "cross_v1": x_cn, "fint": e_fi, "dnn": _flat(e_dnn, x.dense)}

    @staticmethod
    def _run(kind: str, module: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = module(inputs[kind])
        return out.flatten(1) if kind == "fint" else out

    def public_outputs(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One ``(B, K_kind, P, H_kind)`` block per public kind: the mapped activations ``f_p(e_pub^k)``."""
        blocks = []
        for kind, module in self.public.items():
            a = module(inputs[kind]).transpose(0, 1) if kind == "dnn" else self._run(kind, module, inputs).unsqueeze(1)
            blocks.append(stack_mappings(a, self.mapping_names, 2))
        return blocks

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        inputs = self._structure_inputs(x)
        blocks = self.public_outputs(inputs)
        gate_in = x.flat() if self.gate_kind == "mg" else None
        P = len(self.mapping_names)
        out = []
        for t in range(len(self.tasks)):
            # under autocast the tower input is assembled in bf16 (the tower's first product would cast it whole):
            # the gates are cast before gating the bf16 expert blocks, the private outputs one by one; fp32: as is
            g = to_autocast(self.gates[t](gate_in))  # (1 or B, K_total·P)
            parts = [
                (gk.reshape(g.shape[0], blk.shape[1], P, 1) * blk).flatten(1)
                for gk, blk in zip(self._block_gates(g, blocks), blocks, strict=True)
            ]
            out.append(torch.cat(parts + self._private_parts(t, inputs), 1))
        return out

    def tower_outputs(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        """With ``fold_gates`` (value gates, MLP towers, no plug-in reading the tower inputs, eager mode) each
        tower's first layer is formed with the gates folded into its weights
        (:func:`~mtlrec.layers.folded_gates.folded_first_layers`): the gated public block is never built, and
        the tasks' public products are one GEMM. Otherwise the tower inputs of :meth:`backbone`."""
        if not self._folds_gates():
            return super().tower_outputs(x)
        inputs = self._structure_inputs(x)
        blocks = self.public_outputs(inputs)
        shared = _concat([b.flatten(1) for b in blocks])
        scales = [self._column_gates(self.gates[t](None), blocks) for t in range(len(self.tasks))]
        privates = [_concat(self._private_parts(t, inputs)) for t in range(len(self.tasks))]
        towers = [self.towers[t] for t in self.task_names]
        firsts = folded_first_layers(shared, scales, privates, [tower[0] for tower in towers])
        out = []
        for tower, h in zip(towers, firsts, strict=True):
            for layer in list(tower)[1:]:
                h = layer(h)
            out.append(h)
        return out

    def _folds_gates(self) -> bool:
        return (
            self.fold_gates
            and self.gate_kind == "tvg"
            and len(self.public) > 0
            and all(len(self.tower_sizes(t)) for t in self.task_names)
            and not self.tower_inputs_are_read()
            and not aligned.capturing_graph()
        )

    def _block_gates(self, g: torch.Tensor, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ``(1 or B, K_total·P)`` gate values split into each public block's ``(1 or B, k·P)`` columns."""
        sizes = [blk.shape[1] * len(self.mapping_names) for blk in blocks]
        return list(g.split(sizes, 1))

    def _column_gates(self, g: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The ``(1, K_total·P)`` gate values repeated over each ``(expert, mapping)`` pair's columns."""
        return _concat(
            [
                gk.repeat_interleave(blk.shape[-1], 1)
                for gk, blk in zip(self._block_gates(g, blocks), blocks, strict=True)
            ]
        )

    def _private_parts(self, t: int, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Task ``t``'s private expert outputs, each ``(B, width)``, in the autocast dtype under autocast."""
        return [to_autocast(self._run(kind, m, inputs)) for kind, m in self.private[t].items()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches: the SSG layer and the public experts (the private experts and the
        per-task gates belong to one task each)."""
        return [p for m in (self.ssg, self.public) for p in m.parameters() if p.requires_grad]

    # -- inspection -----------------------------------------------------------------------------------------------
    def gate_table(self, batch: Any | None = None) -> dict[str, torch.Tensor]:
        """Gate values per task as ``(num_public_experts, P)``; MG gates are averaged over ``batch``'s rows."""
        if self.gate_kind == "mg":
            if batch is None:
                raise ValueError("mapping gates (MG) depend on the input: pass a batch")
            with torch.no_grad():
                x = self.embed(batch).flat()
                vals = [g(x).mean(0) for g in self.gates]
        else:
            with torch.no_grad():
                vals = [g.values() for g in self.gates]
        P = len(self.mapping_names)
        return {t: v.reshape(self.num_public, P) for t, v in zip(self.task_names, vals, strict=True)}

    def logit_parts(self, batch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Public and private parts of each task's logit before the sigmoid (Fig. 3b), bias left out.

        Only defined for the linear head (``tower_hidden=()``, the paper's tower)."""
        if any(len(self.tower_sizes(t)) for t in self.task_names):
            raise ValueError("public/private logit parts need the linear head (tower_hidden=())")
        with torch.no_grad():
            inputs = self.backbone(self.embed(batch))
            parts = {}
            for t, h in zip(self.task_names, inputs, strict=True):
                w = self.heads[t].weight[0]
                pub = h[:, : self.public_dim] @ w[: self.public_dim]
                pri = h[:, self.public_dim :] @ w[self.public_dim :]
                parts[t] = (pub, pri)
        return parts


MT_PHN_SETTINGS = {
    "D_pub,C&F_pub": (("dnn", "cross", "fint"), ()),
    "D_pri,C&F_pub": (("cross", "fint"), ("dnn",)),
    "D_pub,C&F_pri": (("dnn",), ("cross", "fint")),
}


@register_model("mt_phn", family="multi_task", paper="DEPHN (Kong et al., IJCNN'23) §IV-B, Table I: MT-PHN")
class MTPHN(HeterogeneousMTL):
    """MT-PHN: MMoE whose experts are the heterogeneous PHN modules (Cross, FINT, DNN) on their SSG outputs;
    one input-dependent softmax gate per task over the public experts (MG, MMoE eq. 5) and the public and private
    logits added before one sigmoid (MODELS.md A.4).

    ``setting`` (Table I): ``"D_pub,C&F_pri"`` (default, the best; kept in DEPHN) — ``num_dnn_experts`` public DNN
    experts, Cross + FINT private per task; ``"D_pri,C&F_pub"`` — one DNN per task private, one Cross + one FINT
    public; ``"D_pub,C&F_pub"`` — all public (pure heterogeneous MMoE). [A]: expert counts and sizes, the linear head
    (gate scalar × expert output feeds the head, so experts of different widths mix without projections).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        setting: str = "D_pub,C&F_pri",
        num_dnn_experts: int = 4,
        dnn_hidden: Sequence[int] = (256, 128),
        cross_layers: int = 3,
        cross_variant: str = "v2",
        fint_layers: int = 3,
        use_ssg: bool = True,
        ssg_parametrization: str = "sigmoid",
        attention_heads: int = 2,
        **kw: Any,
    ) -> None:
        key = setting.replace(" ", "")
        if key not in MT_PHN_SETTINGS:
            raise ValueError(f"unknown MT-PHN setting {setting!r}; choose from {list(MT_PHN_SETTINGS)}")
        public, private = MT_PHN_SETTINGS[key]
        self.setting = key
        super().__init__(
            layout,
            tasks,
            public=public,
            private=private,
            num_dnn_experts=num_dnn_experts,
            dnn_hidden=dnn_hidden,
            cross_layers=cross_layers,
            cross_variant=cross_variant,
            fint_layers=fint_layers,
            mappings=("raw",),
            gate="mg",
            tvg_parametrization="sigmoid",
            use_ssg=use_ssg,
            ssg_parametrization=ssg_parametrization,
            attention_heads=attention_heads,
            **kw,
        )


@register_model("dephn", family="multi_task", paper="DEPHN (Kong et al., IJCNN'23) eqs. 1-9, Figs. 2-6")
class DEPHN(HeterogeneousMTL):
    """DEPHN: Different Expression Parallel Heterogeneous Network (MODELS.md A.3).

    SSG (eq. 1) → ``num_dnn_experts`` public DNN experts on the SSG_DNN output (eq. 2) and, per task, private
    CrossNet-v2 + FINT experts on SSG_CN / SSG_FI (A.3.2) → explicit mappings of the public activations (A.3.3 [A]:
    ``mappings=("raw", "sin", "cos")``; also ``square``, ``sin2``, ``cos2``) → per-task gates over (expert, mapping)
    (``gate="tvg"``, trainable values σ(θ) init 0.5, default; ``"mg"``: softmax(W x0), Fig. 6) → linear heads,
    public and private logits added before one sigmoid (eqs. 4-6, [A] fix of eq. 6).

    Virtual gradient (eqs. 8-9): ``use_vg`` declares the ``virtual_gradient`` plug-in as a default of this model
    (:meth:`default_plugins`; ``create_model`` attaches it to the task gates like any plug-in) with ``vg_variant``
    (default ``add_sqrt``) and ``vg_relevance`` (default ``pearson``): DEPHN's final choice.
    Ablations: ``use_vg``, ``use_mapping`` (False: raw mapping only), ``use_ssg`` (False: raw embeddings everywhere).
    Other [A] choices: ``tvg_parametrization`` (sigmoid), ``ssg_parametrization`` (sigmoid), K = 4 experts of
    [256, 128], 3 cross / FINT layers, ``extra_private_dcn_v1`` (adds DCN-v1 as a third private expert, off).
    Computation, not model: ``fold_gates`` (default on) forms an MLP tower's first layer with the value gates
    folded into its weights (:meth:`HeterogeneousMTL.tower_outputs`), equal to float rounding; ``False`` builds
    the gated tower inputs as the tables made before 2026-12-03 did (their numbers bit for bit).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        num_dnn_experts: int = 4,
        dnn_hidden: Sequence[int] = (256, 128),
        cross_layers: int = 3,
        cross_variant: str = "v2",
        fint_layers: int = 3,
        mappings: Sequence[str] = ("raw", "sin", "cos"),
        use_mapping: bool = True,
        gate: str = "tvg",
        tvg_parametrization: str = "sigmoid",
        use_ssg: bool = True,
        ssg_parametrization: str = "sigmoid",
        attention_heads: int = 2,
        use_vg: bool = True,
        vg_variant: str = "add_sqrt",
        vg_relevance: str = "pearson",
        extra_private_dcn_v1: bool = False,
        fold_gates: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(
            layout,
            tasks,
            public=("dnn",),
            private=("cross", "fint"),
            num_dnn_experts=num_dnn_experts,
            dnn_hidden=dnn_hidden,
            cross_layers=cross_layers,
            cross_variant=cross_variant,
            fint_layers=fint_layers,
            mappings=tuple(mappings) if use_mapping else ("raw",),
            gate=gate,
            tvg_parametrization=tvg_parametrization,
            use_ssg=use_ssg,
            ssg_parametrization=ssg_parametrization,
            attention_heads=attention_heads,
            extra_private_dcn_v1=extra_private_dcn_v1,
            fold_gates=fold_gates,
            **kw,
        )
        self.use_vg = use_vg
        self.vg_settings = {"variant": vg_variant, "relevance": vg_relevance}

    def default_plugins(self) -> dict[str, Any]:
        """DEPHN's virtual gradient as configuration (:class:`~mtlrec.models.capabilities.DefaultPlugins`):
        ``create_model`` attaches it through the one plug-in path, with ``vg_variant`` and ``vg_relevance``
        (a ``virtual_gradient={...}`` argument is merged over them; ``virtual_gradient=False`` equals
        ``use_vg=False``). VG needs at least two tasks."""
        if not self.use_vg or len(self.tasks) < 2:
            return {}
        return {"virtual_gradient": dict(self.vg_settings)}

    def vg_gate_groups(self) -> list[list[Gate]]:
        """The per-task gates over (expert, mapping), in task order (read by the virtual-gradient plug-in)."""
        return [list(self.gates)]
