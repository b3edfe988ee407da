"""Task weighting strategies: one class per strategy, chosen by name; the trainer only calls the interface.

A strategy turns the vector of task losses into the scalar that is back-propagated. Strategies that need
gradients (GradNorm, PCGrad, in a later issue) override :meth:`WeightingStrategy.backward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

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

    def __init__(self, task_weights: Sequence[float]) -> None:
        self.base_weights = torch.tensor(list(task_weights), dtype=torch.float32)

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

    def __init__(self, task_weights: Sequence[float]) -> None:
        super().__init__([1.0] * len(task_weights))


@register_weighting("ple_dynamic")
class PLEDynamicWeighting(WeightingStrategy):
    """PLE §4.3: ``ω_k(t) = ω_{k,0} · γ_k^t`` with t the epoch ([A] updated per epoch, MODELS.md E.2)."""

    def __init__(self, task_weights: Sequence[float], gammas: Sequence[float] | float = 1.0) -> None:
        super().__init__(task_weights)
        g = [gammas] * len(task_weights) if isinstance(gammas, int | float) else list(gammas)
        self.gammas = torch.tensor(g, dtype=torch.float32)

    def weights(self, epoch: int) -> torch.Tensor:
        return self.base_weights * self.gammas**epoch


def create_weighting(name: str, task_weights: Sequence[float], **params) -> WeightingStrategy:
    if name not in _STRATEGIES:
        raise ValueError(f"unknown weighting {name!r}; available: {sorted(_STRATEGIES)}")
    return _STRATEGIES[name](task_weights, **params)


def list_weightings() -> list[str]:
    return sorted(_STRATEGIES)
