"""Multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtlrec.layers import aligned

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "prelu": nn.PReLU,
    "silu": nn.SiLU,
    "none": nn.Identity,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """``Linear → [BatchNorm] → activation → [Dropout]`` for each hidden size; ``output_dim`` adds a last Linear."""

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        d = input_dim
        for h in hidden:
            layers.append(aligned.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if output_dim is not None:
            layers.append(aligned.Linear(d, output_dim))
            d = output_dim
        super().__init__(*layers)
        self.output_dim = d
