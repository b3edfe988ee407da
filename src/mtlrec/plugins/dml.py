"""DML: Deep Mutual Learning across task towers (Ren, Du, Wang, Zhang; arXiv 2309.10357; MODELS.md Part B).

DML changes only the task-tower part of any multi-task backbone, so it is a :class:`TowerPlugin` that attaches to
every registered model through the base class plug-in points:

``create_model("mmoe", data, dml={"ctfm": True, "gkd": True})`` or ``dml={"variant": "dml"}``.

**CTFM** (Cross Task Feature Mining, one shared module at the entry of the towers; B.2 ``task_coattention``)::

    X = stack(e_1..e_T) + τ                      τ ∈ R^{T×d}, init N(0, 0.01²) (stddev 0.01, as the authors' code)
    Q = ReLU(X W_Q + b_Q)                        the query keeps its gradient
    X' = sg(X) if ctfm_stop_gradient else X      stop-gradient: task t's loss never reaches the other towers' inputs
    K = ReLU(X' W_K + b_K),  V = ReLU(X' W_V + b_V)
    A = softmax(Q K^T / sqrt(d))                 (B, T, T), over all tasks including itself
    u_t = dropout(A V)[:, t] + e_t               residual; u_t replaces tower t's input

**GKD** (Global Knowledge Distillation, one small module per task; B.2 ``task_consistency``)::

    g   = sg(concat(h_1..h_T))                   global knowledge from all towers' hidden states, gradient blocked
    i_t = dropout(ReLU(W_i,t g + b))             (d_h,t)
    w_t = sigmoid(W_w,t [h_t ; i_t] + b)         experience weight (``gkd_weight_layers`` adds ReLU layers before)
    logit_t += v_t^T (w_t ⊙ i_t)                 no bias

The five variants of the authors' study (``variant``): ``plain`` (nothing attached: the model is bit-identical to the
one built without ``dml``), ``ctfm``, ``ctfm_no_sg`` (CTFM without stop-gradient), ``gkd`` and ``dml`` (both).
Explicit switches ``ctfm``, ``gkd``, ``ctfm_stop_gradient`` override the variant.

[A] choices (MODELS.md B.2 / G.10), each an option:

* Tower inputs of different widths (the authors' backbones all give width d = last expert layer): with
  ``ctfm_projection="auto"`` (default) inputs of unequal widths are mapped by a per-task linear layer to
  ``d = max(d_t)`` before the attention and the attended vector back to ``d_t`` by a per-task linear layer before the
  residual; equal widths use no projection (the authors' form exactly). ``"always"`` forces the projections.
* ``task_embedding_l2`` (the authors' ``lamda`` L2 on τ): default 0, reported as the aux loss ``dml_task_emb_l2``.
* ``dropout`` (CTFM output and GKD ``i_t``; the authors use keep 0.5): default 0.
* ``gkd_stop_gradient`` (default True, as the paper): switch off to let GKD's gradient reach every tower.
* The GKD terms are added to the heads' logits (for a regression task: to the predicted value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtlrec.errors import unknown_name
from mtlrec.models.base import MultiTaskModel, TowerPlugin
from mtlrec.models.registry import plugin_spec, register_plugin

VARIANTS: dict[str, dict[str, bool]] = {
    "plain": {"ctfm": False, "gkd": False, "ctfm_stop_gradient": True},
    "ctfm": {"ctfm": True, "gkd": False, "ctfm_stop_gradient": True},
    "ctfm_no_sg": {"ctfm": True, "gkd": False, "ctfm_stop_gradient": False},
    "gkd": {"ctfm": False, "gkd": True, "ctfm_stop_gradient": True},
    "dml": {"ctfm": True, "gkd": True, "ctfm_stop_gradient": True},
}


class CTFM(TowerPlugin):
    """Cross Task Feature Mining over the tower inputs ``e_t (B, d_t)`` (module docstring; DML B.2)."""

    def __init__(
        self,
        input_dims: Sequence[int],
        *,
        stop_gradient: bool = True,
        dropout: float = 0.0,
        task_embedding_l2: float = 0.0,
        projection: str = "auto",
    ) -> None:
        super().__init__()
        if projection not in ("auto", "always"):
            raise ValueError(f"ctfm_projection must be 'auto' or 'always', got {projection!r}")
        self.input_dims = list(input_dims)
        self.num_tasks = len(self.input_dims)
        self.dim = max(self.input_dims)
        self.stop_gradient = stop_gradient
        self.task_embedding_l2 = task_embedding_l2
        self.project = projection == "always" or len(set(self.input_dims)) > 1
        d = self.dim
        self.task_embedding = nn.Parameter(torch.randn(self.num_tasks, d) * 0.01)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)
        if self.project:
            self.proj_in = nn.ModuleList(nn.Linear(dt, d) for dt in self.input_dims)
            self.proj_out = nn.ModuleList(nn.Linear(d, dt) for dt in self.input_dims)

    def on_tower_inputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != self.num_tasks:
            raise ValueError(f"CTFM built for {self.num_tasks} tasks, got {len(inputs)} tower inputs")
        xs = [p(e) for p, e in zip(self.proj_in, inputs, strict=True)] if self.project else inputs
        x = torch.stack(xs, 1) + self.task_embedding  # (B, T, d)
        q = torch.relu(self.query(x))
        kv_in = x.detach() if self.stop_gradient else x
        k = torch.relu(self.key(kv_in))
        v = torch.relu(self.value(kv_in))
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=-1)  # (B, T, T)
        c = self.dropout(attn @ v)  # (B, T, d)
        if self.project:
            return [e + p(c[:, t]) for t, (p, e) in enumerate(zip(self.proj_out, inputs, strict=True))]
        return [e + c[:, t] for t, e in enumerate(inputs)]

    def aux_losses(self) -> dict[str, torch.Tensor]:
        if self.task_embedding_l2 > 0 and self.training:
            # tf.keras.regularizers.l2(λ): λ · Σ τ²
            return {"dml_task_emb_l2": self.task_embedding_l2 * self.task_embedding.pow(2).sum()}
        return {}


class GKDHead(nn.Module):
    """One task's global-knowledge term ``v^T (w ⊙ i)`` from ``g`` (all hidden states) and ``h_t``."""

    def __init__(self, global_dim: int, hidden_dim: int, weight_layers: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.info = nn.Linear(global_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        width = 2 * hidden_dim
        for w in weight_layers:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        layers += [nn.Linear(width, hidden_dim), nn.Sigmoid()]
        self.weight = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        i = self.dropout(torch.relu(self.info(g)))
        w = self.weight(torch.cat([h, i], -1))
        return self.out(w * i).squeeze(-1)


class GKD(TowerPlugin):
    """Global Knowledge Distillation: one :class:`GKDHead` per task, its term added to the task's logit."""

    def __init__(
        self,
        hidden_dims: Sequence[int],
        *,
        stop_gradient: bool = True,
        dropout: float = 0.0,
        weight_layers: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.hidden_dims = list(hidden_dims)
        self.stop_gradient = stop_gradient
        total = sum(self.hidden_dims)
        self.heads = nn.ModuleList(GKDHead(total, d, weight_layers, dropout) for d in self.hidden_dims)

    def on_logits(self, hiddens: list[torch.Tensor], logits: list[torch.Tensor]) -> list[torch.Tensor]:
        g = torch.cat(hiddens, -1)
        if self.stop_gradient:
            g = g.detach()
        return [z + head(g, h).to(z.dtype) for head, h, z in zip(self.heads, hiddens, logits, strict=True)]


def resolve_config(spec: dict[str, Any] | bool | str) -> dict[str, Any]:
    """Normalise a ``dml=`` spec (``True``, a variant name, or a dict) into explicit switches and options."""
    if spec is True:
        spec = {"variant": "dml"}
    elif isinstance(spec, str):
        spec = {"variant": spec}
    spec = dict(spec)
    variant = spec.pop("variant", None)
    if variant is not None and variant not in VARIANTS:
        raise unknown_name("DML variant", variant, VARIANTS, where="dml.variant")
    cfg: dict[str, Any] = {
        **(VARIANTS[variant] if variant else {"ctfm": False, "gkd": False, "ctfm_stop_gradient": True}),
        "gkd_stop_gradient": True,
        "dropout": 0.0,
        "task_embedding_l2": 0.0,
        "ctfm_projection": "auto",
        "gkd_weight_layers": [],
    }
    unknown = set(spec) - set(cfg)
    if unknown:
        raise unknown_name("key", sorted(unknown)[0], set(cfg) | {"variant"}, where="dml")
    cfg.update(spec)
    return cfg


def dml_spec(spec: dict[str, Any] | bool | str) -> dict[str, Any]:
    """The registry's normaliser: ``True`` → the full ``dml`` variant, a name → that variant, a dict → a copy."""
    return {"variant": "dml"} if spec is True else plugin_spec(spec)


@register_plugin("dml", normalize=dml_spec)
def attach_dml(model: MultiTaskModel, spec: dict[str, Any] | bool | str) -> MultiTaskModel:
    """Attach CTFM and/or GKD to ``model`` (see the module docstring for ``spec``). ``plain`` attaches nothing."""
    cfg = resolve_config(spec)
    if cfg["ctfm"]:
        model.add_plugin(
            CTFM(
                model.tower_input_dims,
                stop_gradient=cfg["ctfm_stop_gradient"],
                dropout=cfg["dropout"],
                task_embedding_l2=cfg["task_embedding_l2"],
                projection=cfg["ctfm_projection"],
            )
        )
    if cfg["gkd"]:
        model.add_plugin(
            GKD(
                [model.towers[t].output_dim for t in model.task_names],
                stop_gradient=cfg["gkd_stop_gradient"],
                dropout=cfg["dropout"],
                weight_layers=cfg["gkd_weight_layers"],
            )
        )
    model.dml_config = cfg
    return model
