"""ESMM: Entire Space Multi-task Model (Ma et al., SIGIR'18; MODELS.md E.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.models.base import EmbeddedInputs, ModelOutput, MultiTaskModel, masked_task_loss
from mtlrec.models.registry import register_model
from mtlrec.schema import TaskSpec

_LOG_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate everywhere (Mächler 2012: ``log(−expm1(x))`` near 0,
    ``log1p(−exp(x))`` below ``−log 2``)."""
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def ctcvr_log_probs(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pCTCVR, log(1 − pCTCVR))`` for ``pCTCVR = σ(a)·σ(b)`` (ESMM eq. 1), computed in log space.

    ``log p = logσ(a) + logσ(b)``. ``1 − σ(a)σ(b) = σ(−a) + σ(a)σ(−b)``, so
    ``log(1 − p) = logaddexp(logσ(−a), logσ(a) + logσ(−b))``: exact for every pair of logits, including those where
    ``p`` rounds to 1 and ``log1mexp(log p)`` would give ``−inf``; it equals :func:`log1mexp` ``(log p)`` wherever
    that is finite.
    """
    a, b = ctr_logit.float(), cvr_logit.float()
    log_ctr = F.logsigmoid(a)
    log_p = log_ctr + F.logsigmoid(b)
    log_1mp = torch.logaddexp(F.logsigmoid(-a), log_ctr + F.logsigmoid(-b))
    return log_p, log_1mp


def ctcvr_bce(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row ``BCE(target, pCTR·pCVR)`` (ESMM eq. 3, second term), stable in log space."""
    log_p, log_1mp = ctcvr_log_probs(ctr_logit, cvr_logit)
    return -(target * log_p + (1.0 - target) * log_1mp)


@register_model("esmm", family="multi_task_baseline", paper="Ma et al., SIGIR'18 (ESMM), eqs. 1-3")
class ESMM(MultiTaskModel):
    """Entire Space Multi-task Model: a CTR and a CVR sub-network over one shared embedding dictionary.

    * ``pCTCVR = pCTR × pCVR`` (eq. 1). pCVR = p(z=1 | y=1, x) is never trained directly.
    * Loss (eq. 3), over ALL impressions: ``Σ_i BCE(y_i, pCTR_i) + Σ_i BCE(y_i & z_i, pCTR_i · pCVR_i)``. The first
      term is the CTR task's loss; the second replaces the CVR task's loss (:meth:`task_losses`), so the trainer
      stays generic. Both are means over the rows ([A]: eq. 3 sums; the mean only rescales the learning rate).
      "All impressions" is the CTR task's sample space (all rows unless the CTR task declares a mask); the CVR
      task's own mask (normally ``click``) is used only for its metrics. The CTCVR term is computed in log space
      (:func:`ctcvr_log_probs`), never as ``log(σ(a)σ(b))``.
    * Sub-networks: the base class's per-task towers, both fed the flattened shared embeddings (ESMM-NS, the
      non-shared ablation, is not built). [A] ``tower_hidden`` default ``[360, 200, 80]`` with ReLU: the paper's BASE
      MLP ``360 × 200 × 80 × 2`` with the 2-way softmax replaced by one logit (equivalent). The paper's embedding
      dimension is 18 (pass ``embedding_dim=18``); Adam (β = 0.9, 0.999, ε = 1e-8) is the trainer's.
    * Tasks: ``ctr_task`` / ``cvr_task`` name the CTR and CVR tasks ([A] default: the first and the second declared
      task); the CVR task's label is the conversion ``z``; the CTCVR target is ``click × conversion``. Any further
      task gets an ordinary tower and loss.
    * Outputs: ``logits[ctr]`` = CTR logit, ``logits[cvr]`` = CVR logit (pCVR, evaluate it on clicked rows via the
      CVR task's mask), ``extras["ctcvr"]`` = the pCTCVR logit ``log p − log(1 − p)``.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        tasks: Sequence[TaskSpec],
        *,
        ctr_task: str | None = None,
        cvr_task: str | None = None,
        tower_hidden: Sequence[int] | dict[str, Sequence[int]] = (360, 200, 80),
        **kw,
    ) -> None:
        super().__init__(layout, tasks, tower_hidden=tower_hidden, **kw)
        if len(self.tasks) < 2:
            raise ValueError("ESMM needs a CTR task and a CVR task")
        self.ctr_task = ctr_task or self.task_names[0]
        self.cvr_task = cvr_task or self.task_names[1]
        for role, name in (("ctr_task", self.ctr_task), ("cvr_task", self.cvr_task)):
            if name not in self.task_names:
                raise ValueError(f"ESMM {role}={name!r} is not one of the tasks {self.task_names}")
            if self.tasks[self.task_names.index(name)].type != "binary":
                raise ValueError(f"ESMM {role}={name!r} must be a binary task")
        if self.ctr_task == self.cvr_task:
            raise ValueError(f"ESMM ctr_task and cvr_task must differ, both are {self.ctr_task!r}")
        self._ctr_idx = self.task_names.index(self.ctr_task)
        self._cvr_idx = self.task_names.index(self.cvr_task)
        self.build_towers(self.input_dim)

    @property
    def ctcvr_funnel(self) -> tuple[list[str], str]:
        """pCTCVR = pCTR · pCVR over every impression (:class:`~mtlrec.models.capabilities.ConversionFunnel`)."""
        return [self.ctr_task, self.cvr_task], "product"

    def backbone(self, x: EmbeddedInputs) -> list[torch.Tensor]:
        h = x.flat()
        return [h] * len(self.tasks)

    def forward(self, batch: Batch) -> ModelOutput:
        out = super().forward(batch)
        log_p, log_1mp = ctcvr_log_probs(out.logits[self.ctr_task], out.logits[self.cvr_task])
        out.extras["ctcvr"] = log_p - log_1mp
        return out

    def task_losses(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """Eq. 3: the CTR task's BCE, and in the CVR task's slot ``BCE(click & conversion, pCTR·pCVR)`` over the
        CTR task's sample space (all impressions); other tasks keep the default masked loss."""
        losses = []
        ci, vi = self._ctr_idx, self._cvr_idx
        for j, t in enumerate(self.tasks):
            if j == vi:
                click, space = batch.labels[:, ci], batch.masks[:, ci]
                target = click * batch.labels[:, vi]
                per_row = ctcvr_bce(out.logits[self.ctr_task], out.logits[self.cvr_task], target)
                losses.append((per_row * space).sum() / space.sum().clamp_min(1.0))
            else:
                losses.append(masked_task_loss(t, out.logits[t.name], batch.labels[:, j], batch.masks[:, j]))
        return torch.stack(losses)
