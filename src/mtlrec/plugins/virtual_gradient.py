"""Virtual gradient (VG) for gates: DEPHN (MODELS.md A.3.6-A.3.7), eqs. (8)-(9) and the eight variants of Fig. 4.

During training the gradient that reaches a task's gate value ``G_kp^t`` is multiplied by

``Γ_kp^t = Π_{j≠t} γ(x_jt, y_kp^jt)``,   ``x_jt = |φ(Y_j, Y_t)|`` (label relevance in the batch),
``y_kp^jt = min(1, |G_kp^t − G_kp^j|)`` (gate difference),

while every forward value stays exactly the same (eq. 8: "on the premise of not affecting the forward propagation
value"). The relevance ``φ`` is the Pearson correlation (DEPHN's final choice) or the cosine similarity of the two
tasks' label vectors within the mini-batch.

Variants (Fig. 4; the formulas are only in the figure image, so the parametrisation is MODELS.md A.3.6 [A]):
interaction mode ``add``: ``s = (x + y)/2``, ``mul``: ``s = x·y``; ``u = 2s − 1``; fitness ``abs``: ``2|u|``,
``cos``: ``1 − cos(πu)`` (``add_cos`` is eq. (9) exactly: ``cos((x + y)π) + 1``), ``square``: ``2u²``,
``sqrt``: ``2√|u|``. Default ``add_sqrt`` + Pearson (DEPHN's final choice).

[A] choices, each an option of :func:`attach_virtual_gradient`:

* implementation: a custom autograd function whose forward is the identity and whose backward multiplies the
  gradient by exactly Γ (the "straight-through" reading of A.3.7, MODELS.md G.5). The literal "multiply by Γ,
  divide by its frozen term" form is a no-op for a detached Γ and is not offered.
* zero-variance labels in a batch: ``φ = 0`` (G.6); optional EMA of ``φ`` across batches (``ema``, off).
* rows used for ``φ(Y_j, Y_t)``: all rows of the batch (``rows="all"``, default: a masked task such as CVR on
  clicks then counts as 0 where unobserved, the CTCVR reading DEPHN uses on Ali-CCP), or only rows where both
  tasks are observed (``rows="observed"``; degenerate when one task's mask is the other's label).
* which gates are compared: the :class:`~mtlrec.layers.gates.Gate` modules of a model are grouped by their parent
  module and width; a group of exactly T gates is read as one gate per task, in task order (MMoE's gates, CGC's
  task gates per level); other gates (e.g. PLE's shared gate) are left alone. A model implementing
  :class:`~mtlrec.models.capabilities.VGGateGroups` (DEPHN's value gates) names its groups itself. Gate slots
  are compared by position.

Study options (issue 15): ``gate_optimizer`` (``adam`` / ``sgd``) with ``gate_lr`` (default: the train lr) and
``gate_momentum`` (SGD only, default 0) train the parameters of the compared gates under their own optimizer
(:class:`~mtlrec.models.capabilities.OptimizerGroups`; the trainer builds it): Adam normalises each parameter's
step by its own gradient scale, so a nearly constant Γ barely changes an Adam trajectory, while under plain SGD the
step is proportional to Γ. ``measure_only=True`` computes and logs Γ but leaves every gradient unchanged: the
no-VG reference of a study that still records what Γ would have been (training is then exactly that of no
plug-in, apart from the gate optimizer). Γ is measured over each training epoch
(:class:`~mtlrec.models.capabilities.EpochStats`: ``log.jsonl``'s ``model_stats.vg``): per task the mean, min and
max of Γ over every gate entry and step, the mean gate difference ``min(1, |G^t − G^j|)`` and the mean relevance
``φ`` of the other tasks, and the number of steps.

Usage: ``create_model("mmoe", data, virtual_gradient={"variant": "mul_abs", "relevance": "pearson"})``, the one
plug-in path DML uses too (DEPHN declares its VG settings as a default of that path). The
batch's labels are read by a forward pre-hook on the model, so the trainer needs no special case. VG acts only
while the model is training and gradients are enabled; at inference the gates are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mtlrec.errors import UserError, unknown_name
from mtlrec.layers.gates import Gate
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.capabilities import GROUP_OPTIMIZERS, VGGateGroups
from mtlrec.models.registry import register_plugin

MODES = ("add", "mul")
FITNESS = ("abs", "cos", "square", "sqrt")
VARIANTS = tuple(f"{m}_{f}" for m in MODES for f in FITNESS)
RELEVANCE = ("pearson", "cosine")
SPEC_KEYS = ("variant", "relevance", "ema", "rows", "measure_only", "gate_optimizer", "gate_lr", "gate_momentum")


# ---- pure functions ---------------------------------------------------------------------------------------------
def parse_variant(variant: str) -> tuple[str, str]:
    mode, _, fit = variant.partition("_")
    if mode not in MODES or fit not in FITNESS:
        raise unknown_name("virtual-gradient variant", variant, VARIANTS, where="virtual_gradient.variant")
    return mode, fit


def vg_gamma(x: torch.Tensor, y: torch.Tensor, variant: str = "add_sqrt") -> torch.Tensor:
    """γ(x, y) ∈ [0, 2] of one Fig. 4 variant: ``x`` task relevance, ``y`` gate difference, both in [0, 1]."""
    mode, fit = parse_variant(variant)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32).clamp(max=1.0)
    s = (x + y) / 2 if mode == "add" else x * y
    u = 2 * s - 1
    if fit == "abs":
        return 2 * u.abs()
    if fit == "cos":
        return 1 - torch.cos(math.pi * u)
    if fit == "square":
        return 2 * u * u
    return 2 * u.abs().sqrt()


def task_relevance(labels: torch.Tensor, masks: torch.Tensor | None = None, kind: str = "pearson") -> torch.Tensor:
    """``|φ(Y_j, Y_t)|`` for every task pair, ``(T, T)`` in [0, 1] (diagonal 1), over rows where both are observed.

    ``kind``: ``pearson`` (correlation) or ``cosine`` (similarity of the raw label vectors). An undefined value
    (zero variance / zero norm, or fewer than two shared rows) is 0.
    """
    if kind not in RELEVANCE:
        raise ValueError(f"relevance must be one of {RELEVANCE}, got {kind!r}")
    y = labels.detach().double()
    obs = torch.ones_like(y) if masks is None else (masks.detach() > 0).double()
    both = obs.T @ obs  # (T, T) shared row counts
    if kind == "pearson":
        # per pair, centre each column on the shared rows: Σ w y_i y_j − (Σ w y_i)(Σ w y_j)/n
        yo = y * obs
        s1 = yo.T @ obs  # s1[i, j] = Σ_{rows obs by both} y_i
        s2 = (yo * y).T @ obs  # Σ y_i²
        sxy = yo.T @ yo
        n = both.clamp_min(1.0)
        cov = sxy - s1 * s1.T / n
        var_i = s2 - s1 * s1 / n
        var_j = var_i.T
        denom = (var_i * var_j).clamp_min(0).sqrt()
        eps = 1e-12 * n
    else:
        yo = y * obs
        sxy = yo.T @ yo
        sq = (yo * y).T @ obs
        cov, denom = sxy, (sq * sq.T).clamp_min(0).sqrt()
        eps = 1e-12
    phi = torch.where((denom > eps) & (both >= 2), cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
    phi = phi.abs().clamp(0.0, 1.0)
    phi.fill_diagonal_(1.0)
    return phi.to(labels.dtype if labels.is_floating_point() else torch.float32)


def gate_coefficients(gates: Sequence[torch.Tensor | None], relevance: torch.Tensor, variant: str) -> list:
    """Γ^t = Π_{j≠t} γ(φ_jt, min(1, |G^t − G^j|)) for each task's gate values (``None`` entries are skipped)."""
    out: list[torch.Tensor | None] = []
    for t, gt in enumerate(gates):
        if gt is None:
            out.append(None)
            continue
        coef = torch.ones_like(gt)
        for j, gj in enumerate(gates):
            if j != t and gj is not None:
                coef = coef * vg_gamma(relevance[j, t].to(gt.dtype), (gt - gj).abs(), variant).to(gt.dtype)
        out.append(coef)
    return out


class ScaleGrad(torch.autograd.Function):
    """Identity forward (values bit-identical), gradient multiplied by a fixed ``scale`` in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_grad(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` in forward; ``∂/∂x`` multiplied by ``scale`` (detached) in backward (eq. 8)."""
    return ScaleGrad.apply(x, scale.detach())


# ---- the plug-in ------------------------------------------------------------------------------------------------
@dataclass
class _ForwardRecord:
    """What one training forward leaves for its backward: the relevance and each group's gate values."""

    relevance: torch.Tensor
    gates: dict[int, list[torch.Tensor | None]] = field(default_factory=dict)
    cache: dict[int, list] = field(default_factory=dict)
    stats: GammaStats | None = None

    def coefficient(self, group: int, task: int, variant: str) -> torch.Tensor:
        if group not in self.cache:
            self.cache[group] = gate_coefficients(self.gates[group], self.relevance, variant)
            if self.stats is not None:
                self.stats.observe(self.gates[group], self.cache[group], self.relevance)
        return self.cache[group][task]


class GammaStats:
    """Γ, gate differences and relevance accumulated over training steps, per task (one epoch at a time)."""

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks
        self.reset()

    def reset(self) -> None:
        t = len(self.tasks)
        self.sum = [0.0] * t
        self.count = [0] * t
        self.min = [math.inf] * t
        self.max = [-math.inf] * t
        self.diff_sum = [0.0] * t
        self.diff_count = [0] * t
        self.phi_sum = [0.0] * t
        self.phi_count = [0] * t
        self.steps = 0
        self._last: torch.Tensor | None = None  # the relevance of the last counted step

    def observe(self, gates: list, coefs: list, relevance: torch.Tensor) -> None:
        """One group's Γ of one step (a step whose relevance was seen before counts once in ``steps``)."""
        with torch.no_grad():
            if relevance is not self._last:
                self._last = relevance
                self.steps += 1
                for t in range(len(self.tasks)):
                    others = [float(relevance[j, t]) for j in range(relevance.shape[0]) if j != t]
                    self.phi_sum[t] += sum(others)
                    self.phi_count[t] += len(others)
            for t, (gt, ct) in enumerate(zip(gates, coefs, strict=True)):
                if ct is None or t >= len(self.tasks):
                    continue
                ct = ct.float()
                self.sum[t] += float(ct.sum())
                self.count[t] += ct.numel()
                self.min[t] = min(self.min[t], float(ct.min()))
                self.max[t] = max(self.max[t], float(ct.max()))
                for j, gj in enumerate(gates):
                    if j != t and gj is not None:
                        d = (gt - gj).abs().clamp(max=1.0).float()
                        self.diff_sum[t] += float(d.sum())
                        self.diff_count[t] += d.numel()

    def summary(self) -> dict[str, Any]:
        def per_task(values: list[float], counts: list[int] | None = None) -> dict[str, float | None]:
            out = {}
            for t, name in enumerate(self.tasks):
                n = 1 if counts is None else counts[t]
                v = values[t] / n if n else None
                out[name] = None if v is None or not math.isfinite(v) else round(v, 6)
            return out

        return {
            "steps": self.steps,
            "gamma_mean": per_task(self.sum, self.count),
            "gamma_min": per_task(self.min),
            "gamma_max": per_task(self.max),
            "gate_diff_mean": per_task(self.diff_sum, self.diff_count),
            "relevance_mean": per_task(self.phi_sum, self.phi_count),
        }


class _LazyVG(torch.autograd.Function):
    """Identity forward; backward multiplies by Γ computed from the gate values of the *whole* forward (the other
    tasks' gates may run later in the forward than this one)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, record: _ForwardRecord, group: int, task: int, variant: str, apply: bool):
        ctx.vg = (record, group, task, variant, apply)
        return w.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        record, group, task, variant, apply = ctx.vg
        coef = record.coefficient(group, task, variant)
        return (grad * coef.to(grad.dtype) if apply else grad), None, None, None, None, None


def task_gate_groups(model: nn.Module, num_tasks: int) -> list[list[Gate]]:
    """Groups of ``num_tasks`` gates, one per task in task order (see the module docstring)."""
    if isinstance(model, VGGateGroups):
        return [list(g) for g in model.vg_gate_groups()]
    groups: dict[tuple[str, Any], list[Gate]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Gate):
            groups.setdefault((name.rpartition(".")[0], m.num_outputs), []).append(m)
    return [g for g in groups.values() if len(g) == num_tasks and num_tasks > 1]


class VirtualGradient:
    """Installed on a model by :func:`attach_virtual_gradient`; holds the configuration and the hooks."""

    def __init__(self, model: nn.Module, **config: Any) -> None:
        self.model = None
        self.handles: list = []
        self.configure(**config)
        self.install(model)

    def configure(
        self,
        *,
        variant: str = "add_sqrt",
        relevance: str = "pearson",
        ema: float = 0.0,
        rows: str = "all",
        measure_only: bool = False,
        gate_optimizer: str | None = None,
        gate_lr: float | None = None,
        gate_momentum: float = 0.0,
    ) -> None:
        parse_variant(variant)
        if rows not in ("all", "observed"):
            raise unknown_name("rows", rows, ("all", "observed"), where="virtual_gradient.rows")
        if relevance not in RELEVANCE:
            raise unknown_name("relevance", relevance, RELEVANCE, where="virtual_gradient.relevance")
        if not 0.0 <= ema < 1.0:
            raise UserError(f"virtual_gradient.ema: expected a momentum in [0, 1), got {ema}")
        if not isinstance(measure_only, bool):
            raise UserError(f"virtual_gradient.measure_only: expected true or false, got {measure_only!r}")
        if gate_optimizer is not None and gate_optimizer not in GROUP_OPTIMIZERS:
            raise unknown_name(
                "gate optimizer", gate_optimizer, GROUP_OPTIMIZERS, where="virtual_gradient.gate_optimizer"
            )
        for key, value, low in (("gate_lr", gate_lr, 0.0), ("gate_momentum", gate_momentum, None)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"virtual_gradient.{key}: expected a number, got {value!r}")
            if (low is not None and value <= low) or (low is None and not 0.0 <= value < 1.0):
                want = "> 0" if low is not None else "in [0, 1)"
                raise UserError(f"virtual_gradient.{key}: must be {want}, got {value}")
        if (gate_lr is not None or gate_momentum) and gate_optimizer is None:
            raise UserError("virtual_gradient.gate_lr / gate_momentum: set gate_optimizer (adam or sgd) with them")
        if gate_momentum and gate_optimizer != "sgd":
            raise UserError("virtual_gradient.gate_momentum: a setting of gate_optimizer sgd only")
        self.variant, self.relevance, self.ema, self.rows = variant, relevance, ema, rows
        self.measure_only = measure_only
        self.gate_optimizer, self.gate_lr, self.gate_momentum = gate_optimizer, gate_lr, float(gate_momentum)
        self.enabled = True
        self._phi_ema: torch.Tensor | None = None
        self.record: _ForwardRecord | None = None
        self.last_relevance: torch.Tensor | None = None

    def install(self, model: nn.Module) -> None:
        self.remove()
        self.model = model
        tasks = list(getattr(model, "tasks", []))
        num_tasks = len(tasks) or 1
        self.groups = task_gate_groups(model, num_tasks)
        self.stats = GammaStats([getattr(t, "name", str(i)) for i, t in enumerate(tasks)] or ["0"])
        if isinstance(model, MultiTaskModel):
            model.attach(self)  # asked for the gate optimizer group and the epoch's Γ by the trainer
        self.handles.append(model.register_forward_pre_hook(self._pre_forward))
        for gi, group in enumerate(self.groups):
            for t, gate in enumerate(group):
                hook = _GateHook(self, gi, t)
                gate.weight_hooks.append(hook)
                self.handles.append(hook)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def gate_parameters(self) -> list[nn.Parameter]:
        """The parameters of the compared gates (each once, in group order)."""
        seen: dict[int, nn.Parameter] = {}
        for group in self.groups:
            for gate in group:
                for p in gate.parameters():
                    if p.requires_grad:
                        seen.setdefault(id(p), p)
        return list(seen.values())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """:class:`~mtlrec.models.capabilities.OptimizerGroups`: the gates under ``gate_optimizer`` (none when it is
        unset, or Adam at the train lr: the default optimizer already is that)."""
        if self.gate_optimizer is None or (self.gate_optimizer == "adam" and self.gate_lr is None):
            return []
        group = {"name": "virtual_gradient.gates", "params": self.gate_parameters(), "optimizer": self.gate_optimizer}
        return [group | {"lr": self.gate_lr, "momentum": self.gate_momentum}]

    def epoch_stats(self) -> dict[str, Any]:
        """:class:`~mtlrec.models.capabilities.EpochStats`: the Γ measured since the last call, then reset."""
        out = self.stats.summary() | {"applied": not self.measure_only, "variant": self.variant}
        self.stats.reset()
        return {"vg": out}

    def _pre_forward(self, model: nn.Module, args: tuple) -> None:
        self.record = None
        batch = args[0] if args else None
        if not (self.enabled and model.training and torch.is_grad_enabled() and hasattr(batch, "labels")):
            return
        with torch.no_grad():
            masks = getattr(batch, "masks", None) if self.rows == "observed" else None
            phi = task_relevance(batch.labels, masks, self.relevance)
            if self.ema > 0:
                phi = phi if self._phi_ema is None else self.ema * self._phi_ema + (1 - self.ema) * phi
                self._phi_ema = phi
        self.last_relevance = phi
        self.record = _ForwardRecord(phi, {gi: [None] * len(g) for gi, g in enumerate(self.groups)}, stats=self.stats)


class _GateHook:
    """``(gate, weights) -> weights`` hook: records the weights and routes them through :class:`_LazyVG`."""

    def __init__(self, vg: VirtualGradient, group: int, task: int) -> None:
        self.vg, self.group, self.task = vg, group, task
        self.active = True

    def __call__(self, gate: Gate, weights: torch.Tensor) -> torch.Tensor:
        rec = self.vg.record
        if not self.active or rec is None or not torch.is_grad_enabled() or not gate.training:
            return weights
        rec.gates[self.group][self.task] = weights.detach()
        return _LazyVG.apply(weights, rec, self.group, self.task, self.vg.variant, not self.vg.measure_only)

    def remove(self) -> None:
        self.active = False
        for group in self.vg.groups:
            for gate in group:
                if self in gate.weight_hooks:
                    gate.weight_hooks.remove(self)


@register_plugin("virtual_gradient")
def attach_virtual_gradient(model: nn.Module, spec: dict | bool | str) -> VirtualGradient:
    """Attach (or reconfigure) virtual gradient on every task-gate group of ``model``.

    ``spec``: ``True``, a variant name such as ``"add_sqrt"``, or a dict with ``variant`` (one of
    :data:`VARIANTS`), ``relevance`` (``pearson``/``cosine``), ``ema`` (momentum of an EMA of φ, 0 = off),
    ``rows`` (``all``/``observed``: which rows of the batch define φ), ``measure_only`` (log Γ, scale nothing),
    ``gate_optimizer`` (``adam``/``sgd``), ``gate_lr`` and ``gate_momentum`` (see the module docstring).
    """
    if spec is True:
        spec = {}
    elif isinstance(spec, str):
        spec = {"variant": spec}
    spec = dict(spec)
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise unknown_name("key", sorted(unknown)[0], SPEC_KEYS, where="virtual_gradient")
    existing = getattr(model, "virtual_gradient_plugin", None)
    if isinstance(existing, VirtualGradient):
        existing.configure(**spec)
        existing.install(model)
        return existing
    vg = VirtualGradient(model, **spec)
    model.virtual_gradient_plugin = vg
    return vg
