"""Task weighting strategies: one class per strategy, chosen by name; the trainer only calls the interface.

A strategy turns the vector of task losses ``(T,)`` (each already averaged over its own sample space, PLE eq. 6)
into the scalar that is back-propagated. The interface the trainer uses, for every strategy alike:

* ``combine(losses, epoch)`` → the scalar (``Σ_t w_t L_t`` for the weight-based ones);
* ``backward(total, losses, shared_params)`` runs the backward pass; gradient-based strategies (GradNorm,
  PCGrad) override it and act on ``shared_params`` only (the model's dense shared parameters, never the
  embedding table, whose gradient is always the plain gradient of ``total``);
* ``parameters()``: learnable tensors of the strategy itself (uncertainty's ``log σ²``, GradNorm's weights); the
  trainer optimises them with their own Adam (``lr`` option of the strategy, else the model's lr);
* ``on_epoch_end(avg_losses)``: the mean task losses of the finished training epoch (DWA);
* ``state_dict`` / ``load_state_dict``: everything needed for an exact resume.

Strategies: ``fixed``, ``equal``, ``ple_dynamic`` (PLE §4.3), ``uncertainty`` (Kendall et al., CVPR'18),
``gradnorm`` (Chen et al., ICML'18), ``dwa`` (Liu et al., CVPR'19), ``pcgrad`` (Yu et al., NeurIPS'20).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mtlrec.train import distributed

_STRATEGIES: dict[str, type] = {}


def register_weighting(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _STRATEGIES[name] = cls
        cls.name = name
        return cls

    return deco


class WeightingStrategy:
    """Base: ``combine(losses)`` → scalar; ``backward(total, losses, shared_params)`` runs the backward pass."""

    name = "base"

    #: learning rate for :meth:`parameters` (``None``: the trainer's lr)
    lr: float | None = None

    def __init__(self, task_weights: Sequence[float], *, task_types: Sequence[str] | None = None) -> None:
        self.base_weights = torch.tensor(list(task_weights), dtype=torch.float32)
        self.num_tasks = len(self.base_weights)
        self.task_types = list(task_types) if task_types is not None else ["binary"] * self.num_tasks
        if len(self.task_types) != self.num_tasks:
            raise ValueError(f"{len(self.task_types)} task types for {self.num_tasks} tasks")

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable tensors of the strategy (none by default)."""
        return []

    def on_epoch_end(self, avg_losses: torch.Tensor) -> None:
        """Called by the trainer after each training epoch with the epoch's mean task losses ``(T,)``."""

    def weights(self, epoch: int) -> torch.Tensor:
        return self.base_weights

    def combine(self, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        return (self.weights(epoch).to(losses.device) * losses).sum()

    def backward(self, total: torch.Tensor, losses: torch.Tensor, shared_params: list[torch.nn.Parameter]) -> None:
        total.backward()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@register_weighting("fixed")
class FixedWeighting(WeightingStrategy):
    """``L = Σ_t w_t L_t`` with each task's ``weight`` from its spec (1.0 by default, i.e. equal weights)."""


@register_weighting("equal")
class EqualWeighting(WeightingStrategy):
    """``L = Σ_t L_t``: every task weight 1, whatever the specs say."""

    def __init__(self, task_weights: Sequence[float], **kw) -> None:
        super().__init__([1.0] * len(task_weights), **kw)


@register_weighting("ple_dynamic")
class PLEDynamicWeighting(WeightingStrategy):
    """PLE §4.3: ``ω_k(t) = ω_{k,0} · γ_k^t`` with t the epoch ([A] updated per epoch, MODELS.md E.2)."""

    def __init__(self, task_weights: Sequence[float], gammas: Sequence[float] | float = 1.0, **kw) -> None:
        super().__init__(task_weights, **kw)
        g = [gammas] * len(task_weights) if isinstance(gammas, int | float) else list(gammas)
        self.gammas = torch.tensor(g, dtype=torch.float32)

    def weights(self, epoch: int) -> torch.Tensor:
        return self.base_weights * self.gammas**epoch


@register_weighting("uncertainty")
class UncertaintyWeighting(WeightingStrategy):
    """Homoscedastic-uncertainty weighting (Kendall, Gal, Cipolla, CVPR'18, eqs. 7 and 10).

    One learnable ``s_t = log σ_t²`` per task (init ``init_log_var``, 0 = σ² 1). With ``form="kendall"`` (default):

    * regression task (eq. 7, Gaussian likelihood): ``1/(2σ²) L_t + log σ = ½ e^{-s_t} L_t + ½ s_t``;
    * classification task (eq. 10, scaled softmax/sigmoid approximation): ``1/σ² L_t + log σ = e^{-s_t} L_t + ½ s_t``.

    [A] ``form="simple"`` uses ``e^{-s_t} L_t + s_t`` for every task (the common re-implementation). [A] each
    task's term is also multiplied by its spec ``weight`` (1 by default, i.e. the paper). The ``s_t`` are returned
    by :meth:`parameters` and trained by the trainer with the model's lr unless ``lr`` is given.
    """

    def __init__(
        self,
        task_weights: Sequence[float],
        *,
        form: str = "kendall",
        init_log_var: float = 0.0,
        lr: float | None = None,
        **kw,
    ) -> None:
        super().__init__(task_weights, **kw)
        if form not in ("kendall", "simple"):
            raise ValueError(f"uncertainty form must be 'kendall' or 'simple', got {form!r}")
        self.form = form
        self.lr = lr
        self.log_vars = torch.nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))
        regression = torch.tensor([t == "regression" for t in self.task_types])
        if form == "kendall":
            self.loss_scale = torch.where(regression, 0.5, 1.0)
            self.reg_scale = torch.full((self.num_tasks,), 0.5)
        else:
            self.loss_scale = torch.ones(self.num_tasks)
            self.reg_scale = torch.ones(self.num_tasks)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_vars]

    def weights(self, epoch: int) -> torch.Tensor:
        """The effective (detached) weight of each task loss: ``w_t · c_t · e^{-s_t}``."""
        return (self.base_weights * self.loss_scale * torch.exp(-self.log_vars)).detach()

    def combine(self, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        s = self.log_vars.to(losses.device)
        dev = losses.device
        terms = self.loss_scale.to(dev) * torch.exp(-s) * losses + self.reg_scale.to(dev) * s
        return (self.base_weights.to(dev) * terms).sum()

    def state_dict(self) -> dict:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])


def task_gradients(losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(T, P)``: row ``t`` is ``∇_params losses[t]`` flattened (zeros where a parameter is unused); the graph is
    kept for the backward pass that follows."""
    rows = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
            )
        )
    # under several processes: the global batch's per-task gradients (a no-op in one process)
    return distributed.average_across_ranks(torch.stack(rows).float())


def _add_flat_to_grads(params: Sequence[torch.Tensor], delta: torch.Tensor) -> None:
    """``p.grad += delta[slice of p]`` for every parameter that has a gradient."""
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.add_(delta[offset : offset + n].view_as(p).to(p.grad.dtype))
        offset += n


@register_weighting("gradnorm")
class GradNormWeighting(WeightingStrategy):
    """GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML'18, §3 and Algorithm 1).

    Learnable task weights ``w_t`` (init: the spec weights renormalised to sum ``T``); the model is trained on
    ``Σ_t w_t L_t`` with the current ``w`` held constant. The weights receive only the gradient of

        ``L_grad = Σ_t | G_W^(t) − sg(Ḡ_W · r_t^α) |``,  ``G_W^(t) = ‖∇_W w_t L_t‖₂ = w_t ‖∇_W L_t‖₂``,

    with ``Ḡ_W`` the mean of the ``G_W^(t)``, ``L̃_t = L_t / L_t(0)`` (``L_t(0)``: the first non-zero loss of the
    task) and ``r_t = L̃_t / mean(L̃)`` (eq. 2). After every optimiser step the weights are renormalised to sum
    ``T`` (done at the start of the next ``combine``; also clamped to stay positive).

    ``W`` ([A], option ``grad_params``): ``"all"`` (default) = every dense shared parameter of the model (which
    layer is "last" is not well defined in gated networks); ``"last"`` = the last-registered shared weight matrix
    (the paper's choice for speed). Never the embedding table. ``alpha`` [A] default 1.5 (the paper's value for
    most experiments). ``lr``: the weights' learning rate (default: the trainer's).
    """

    def __init__(
        self,
        task_weights: Sequence[float],
        *,
        alpha: float = 1.5,
        grad_params: str = "all",
        lr: float | None = None,
        **kw,
    ) -> None:
        super().__init__(task_weights, **kw)
        if grad_params not in ("all", "last"):
            raise ValueError(f"gradnorm grad_params must be 'all' or 'last', got {grad_params!r}")
        self.alpha = alpha
        self.grad_params = grad_params
        self.lr = lr
        w0 = self.base_weights * self.num_tasks / self.base_weights.sum()
        self.task_w = torch.nn.Parameter(w0.clone())
        self.initial_losses = torch.zeros(self.num_tasks)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.task_w]

    def renormalise(self) -> None:
        with torch.no_grad():
            self.task_w.clamp_(min=1e-4)
            self.task_w.mul_(self.num_tasks / self.task_w.sum())

    def weights(self, epoch: int) -> torch.Tensor:
        return self.task_w.detach().clone()

    def combine(self, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        self.renormalise()
        cur = losses.detach().float().cpu()
        self.initial_losses = torch.where(self.initial_losses > 0, self.initial_losses, cur)
        return (self.task_w.detach().to(losses.device) * losses).sum()

    def select(self, shared_params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.grad_params == "all":
            return list(shared_params)
        mats = [p for p in shared_params if p.dim() >= 2]
        return mats[-1:]

    def backward(self, total: torch.Tensor, losses: torch.Tensor, shared_params: list[torch.nn.Parameter]) -> None:
        params = self.select(shared_params)
        if not params:
            total.backward()
            return
        norms = task_gradients(losses, params).norm(dim=1).cpu()  # ‖∇_W L_t‖
        total.backward()
        cur = losses.detach().float().cpu()
        ratio = torch.where(self.initial_losses > 0, cur / self.initial_losses.clamp_min(1e-12), torch.ones(()))
        r = ratio / ratio.mean().clamp_min(1e-12)
        g = self.task_w * norms
        target = (g.mean() * r**self.alpha).detach()
        l_grad = (g - target).abs().sum()
        self.task_w.grad = torch.autograd.grad(l_grad, self.task_w)[0]

    def state_dict(self) -> dict:
        return {"task_w": self.task_w.detach().clone(), "initial_losses": self.initial_losses.clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.task_w.copy_(state["task_w"])
        self.initial_losses = state["initial_losses"].clone()


@register_weighting("dwa")
class DynamicWeightAverage(WeightingStrategy):
    """Dynamic Weight Average (Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR'19,
    eq. 7): ``w_t(e) = T · exp(r_t(e−1)/τ) / Σ_i exp(r_i(e−1)/τ)`` with ``r_t(e−1) = L_t(e−1) / L_t(e−2)``, the
    ratio of the task's mean training loss over the last two epochs (fed by the trainer's ``on_epoch_end``).
    ``w_t = 1`` for the first two epochs. ``temperature`` τ = 2 (the paper). [A] the result is multiplied by the
    spec weights (1 by default, i.e. the paper).
    """

    def __init__(self, task_weights: Sequence[float], *, temperature: float = 2.0, **kw) -> None:
        super().__init__(task_weights, **kw)
        self.temperature = temperature
        self.history: list[torch.Tensor] = []

    def on_epoch_end(self, avg_losses: torch.Tensor) -> None:
        self.history = [*self.history, avg_losses.detach().float().cpu().clone()][-2:]

    def weights(self, epoch: int) -> torch.Tensor:
        if len(self.history) < 2:
            return self.base_weights
        r = self.history[-1] / self.history[-2].clamp_min(1e-12)
        return self.base_weights * self.num_tasks * torch.softmax(r / self.temperature, dim=0)

    def state_dict(self) -> dict:
        return {"history": [h.clone() for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [h.clone() for h in state["history"]]


def pcgrad_project(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al., NeurIPS'20, Algorithm 1) on per-task gradients ``(T, P)``: for each task ``i``, for the
    other tasks ``j`` in a random order, ``g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j`` whenever ``g_i·g_j < 0`` (with the
    original ``g_j``). Returns the projected gradients ``(T, P)``; their sum is the update."""
    out = grads.clone()
    num = grads.shape[0]
    sq = (grads * grads).sum(1)
    for i in range(num):
        for j in torch.randperm(num, generator=generator).tolist():
            if j == i or sq[j] == 0:
                continue
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= (dot / sq[j]) * grads[j]
    return out


@register_weighting("pcgrad")
class PCGradWeighting(WeightingStrategy):
    """Projecting Conflicting Gradients (Yu, Kumar, Gupta, Levine, Hausman, Finn, NeurIPS'20, Algorithm 1).

    The per-task gradients ``g_t = ∇ w_t L_t`` of the dense shared parameters are projected with
    :func:`pcgrad_project` and summed; every other parameter (embedding table, towers, heads) gets the plain
    gradient of ``Σ_t w_t L_t`` (+ the model's aux losses, whose gradient on the shared parameters is kept too).
    Task order: a random permutation per task from a generator seeded with ``seed`` (kept in the state dict).
    """

    def __init__(self, task_weights: Sequence[float], *, seed: int = 0, **kw) -> None:
        super().__init__(task_weights, **kw)
        self.generator = torch.Generator().manual_seed(seed)

    def backward(self, total: torch.Tensor, losses: torch.Tensor, shared_params: list[torch.nn.Parameter]) -> None:
        if not shared_params or self.num_tasks < 2:
            total.backward()
            return
        w = self.base_weights.to(losses.device)
        grads = task_gradients(w * losses, shared_params)
        total.backward()
        projected = pcgrad_project(grads, self.generator)
        _add_flat_to_grads(shared_params, projected.sum(0) - grads.sum(0))

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def create_weighting(
    name: str, task_weights: Sequence[float], *, task_types: Sequence[str] | None = None, **params
) -> WeightingStrategy:
    """Build the strategy ``name``; ``task_types`` (``binary``/``regression`` per task) for the ones that use it."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown weighting {name!r}; available: {sorted(_STRATEGIES)}")
    return _STRATEGIES[name](task_weights, task_types=task_types, **params)


def list_weightings() -> list[str]:
    return sorted(_STRATEGIES)
