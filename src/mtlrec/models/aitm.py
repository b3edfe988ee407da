"""AITM: Adaptive Information Transfer Multi-task framework (Xi et al., KDD'21, arXiv 2105.08489; MODELS.md E.4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.layers.mlp import activation
from mtlrec.models.base import EmbeddedInputs, ModelOutput, MultiTaskModel
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec


class AITAttention(nn.Module):
    """The AIT module over the 2-item set ``{p_{t-1}, q_t}``:
    ``z_t = Σ_u w_u h_1(u)``, ``w_u = softmax_u(ŵ_u)``, ``ŵ_u = ⟨h_2(u), h_3(u)⟩ / √k``.

    ``h_1, h_2, h_3`` are ``K × K`` matrices without bias, initialised ``N(0, init_std²)`` (official code: 0.01;
    ``init_std=None`` keeps PyTorch's default). ``forward(p, q)`` with both ``(B, K)`` returns ``(B, K)``; the last
    attention weights (``(B, 2)``: ``[q_t, p_{t-1}]``) are kept detached in :attr:`last_weights`.
    """

    def __init__(self, dim: int, *, init_std: float | None = 0.01) -> None:
        super().__init__()
        self.h1 = nn.Linear(dim, dim, bias=False)
        self.h2 = nn.Linear(dim, dim, bias=False)
        self.h3 = nn.Linear(dim, dim, bias=False)
        if init_std is not None:
            for h in (self.h1, self.h2, self.h3):
                nn.init.normal_(h.weight, 0.0, init_std)
        self.scale = 1.0 / math.sqrt(dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        u = torch.stack([q, p], dim=1)  # (B, 2, K)
        scores = (self.h2(u) * self.h3(u)).sum(-1) * self.scale  # (B, 2)
        w = torch.softmax(scores, dim=1)
        self.last_weights = w.detach()
        return torch.einsum("bu,buk->bk", w, self.h1(u))


def calibrator_loss(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Behavioural expectation calibrator ``L_lc = mean_batch Σ_{t≥2} max(ŷ_t − ŷ_{t−1}, 0)`` over the
    probabilities of the tasks in funnel order."""
    p = torch.stack([x.float() for x in probs], dim=1)  # (B, T)
    return torch.relu(p[:, 1:] - p[:, :-1]).sum(1).mean()


@register_model("aitm", family="multi_task_baseline", paper="Xi et al., KDD'21 (AITM), §3: AIT module + calibrator")
class AITM(MultiTaskModel):
    """Adaptive Information Transfer Multi-task framework for sequential conversions (tasks in funnel order, e.g.
    impression → click → purchase; T ≥ 2 binary tasks in the declared order).

    * Towers: ``q_t = tower_t(emb(x))`` over the shared embeddings (the base class's towers; the backbone only
      flattens the embeddings). [A] ``tower_hidden`` default ``[128, 64, 32]`` (the official Ali-CCP setting, K = 32);
      the official code also uses dropout 0.1 / 0.3 / 0.3 and BN, here ``tower_dropout`` (one value) and no BN.
    * Information transfer: ``p_{t−1} = g_{t−1}(z_{t−1})``: [A] one ``Dense(K)`` + ``transfer_activation``
      (default ReLU, the official code) + optional BN (``transfer_batch_norm``) and dropout (``transfer_dropout``);
      ``transfer_activation="none"`` gives MTReclib's plain linear ``g``.
    * AIT (:class:`AITAttention`): ``z_t = Σ_{u∈{p_{t−1}, q_t}} w_u h_1(u)``, ``z_1 = q_1``; [A] one AIT module per
      transfer step (``share_attention=True`` uses ONE set of ``h_1, h_2, h_3`` for all steps, as the official
      ``AITM_standard.py`` does; identical for two tasks). ``h_*`` init ``N(0, 0.01²)`` (``attention_init_std``);
      the official L2 on them is ``attention_l2`` ([A] default 0, added as aux loss ``aitm_attention_l2``).
    * Output: ``ŷ_t = σ(Dense_1(z_t))`` (the base class's heads).
    * Loss: ``L = L_ce + α L_lc`` with ``L_lc = mean_batch Σ_{t≥2} max(ŷ_t − ŷ_{t−1}, 0)`` (the behavioural
      expectation calibrator), computed in :meth:`forward` from that forward's final logits and returned as aux
      loss ``aitm_calibrator`` already multiplied by ``calibrator_weight`` α ([A] default 0.6, the official 2-task script; ``AITM_standard.py`` uses 0.3). ``L_ce`` is the base class's
      per-task BCE over each task's declared sample space: the paper trains every task on all impressions, so
      declare the tasks without masks to follow it (the calibrator compares unconditional probabilities).
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (128, 64, 32),
        calibrator_weight: float = 0.6,
        transfer_activation: str = "relu",
        transfer_dropout: float = 0.0,
        transfer_batch_norm: bool = False,
        share_attention: bool = False,
        attention_init_std: float | None = 0.01,
        attention_l2: float = 0.0,
        **kw,
    ) -> None:
        super().__init__(layout, tasks, tower_hidden=tower_hidden, **kw)
        if len(self.tasks) < 2:
            raise ValueError("AITM needs at least two tasks (in funnel order)")
        non_binary = [t.name for t in self.tasks if t.type != "binary"]
        if non_binary:
            raise ValueError(f"AITM models sequential conversions: every task must be binary, not {non_binary}")
        self.calibrator_weight = calibrator_weight
        self.attention_l2 = attention_l2
        self.build_towers(self.input_dim)
        dims = [self.towers[t].output_dim for t in self.task_names]
        if share_attention and len(set(dims)) > 1:
            raise ValueError(f"share_attention needs equal tower output sizes, got {dims}")
        self.transfers = nn.ModuleList()
        for d_prev, d in zip(dims[:-1], dims[1:], strict=True):
            layers: list[nn.Module] = [nn.Linear(d_prev, d)]
            if transfer_batch_norm:
                layers.append(nn.BatchNorm1d(d))
            layers.append(activation(transfer_activation))
            if transfer_dropout > 0:
                layers.append(nn.Dropout(transfer_dropout))
            self.transfers.append(nn.Sequential(*layers))
        if share_attention:
            shared = AITAttention(dims[0], init_std=attention_init_std)
            self.attentions = nn.ModuleList([shared] * (len(dims) - 1))
        else:
            self.attentions = nn.ModuleList(AITAttention(d, init_std=attention_init_std) for d in dims[1:])

    @property
    def ctcvr_funnel(self) -> tuple[list[str], str] | None:
        """A funnel only with the calibrator on (p(task t) <= p(task t-1)): the last head then scores the whole funnel
        on every impression; with it off (e.g. census income -> marital) the label product would mean nothing."""
        return (list(self.task_names), "last") if self.calibrator_weight > 0 else None

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h = x.flat()
        return [h] * len(self.tasks)

    def fuse_hiddens(self, hiddens: list[torch.Tensor]) -> list[torch.Tensor]:
        """``q_t`` → ``z_t``: ``z_1 = q_1``, ``z_t = AIT(g_{t−1}(z_{t−1}), q_t)``."""
        z = [hiddens[0]]
        for q, g, ait in zip(hiddens[1:], self.transfers, self.attentions, strict=True):
            z.append(ait(g(z[-1]), q))
        return z

    def forward(self, batch: Batch) -> ModelOutput:
        """The base forward, plus the calibrator on THIS forward's final logits (after any plug-in such as DML has
        acted on them), so it is never computed from stale or pre-plug-in outputs."""
        out = super().forward(batch)
        if self.calibrator_weight > 0:
            probs = [torch.sigmoid(out.logits[t]) for t in self.task_names]
            out.aux_losses["aitm_calibrator"] = self.calibrator_weight * calibrator_loss(probs)
        return out

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """The official L2 on the attention matrices (``attention_l2``), while training."""
        if self.attention_l2 <= 0 or not self.training:
            return {}
        params = {id(p): p for p in self.attentions.parameters()}.values()
        return {"aitm_attention_l2": self.attention_l2 * sum(p.pow(2).sum() for p in params)}
