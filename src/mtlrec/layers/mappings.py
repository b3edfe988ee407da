"""Explicit mappings of expert activations (DEPHN A.3.3 [A]): RM = raw/Taylor terms, TM = Fourier terms.

:func:`stack_mappings` returns ``[f_1(a), …, f_P(a)]`` stacked on a new axis. With DEPHN's default mappings (any of
``raw``, ``sin``, ``cos``) its backward reuses the forward's ``sin a`` and ``cos a`` (``d sin a = cos a``,
``d cos a = −sin a``) instead of computing both again, and sums the terms in autograd's order: the same bits as the
plain stack.

Example::

    >>> import torch
    >>> a = torch.randn(2, 3, 4)
    >>> stack_mappings(a, ("raw", "sin", "cos"), dim=2).shape
    torch.Size([2, 3, 3, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.layers.aligned import capturing_graph

MAPPINGS = {
    "raw": lambda a: a,
    "square": lambda a: a * a,
    "sin": torch.sin,
    "cos": torch.cos,
    "sin2": lambda a: torch.sin(2 * a),
    "cos2": lambda a: torch.cos(2 * a),
}
_FUSED = ("raw", "sin", "cos")  # the mappings whose derivative is another of them (or 1)


class _RawSinCos(torch.autograd.Function):
    """``stack([f(a) for f in names], dim)`` for names drawn from ``raw``/``sin``/``cos``; the backward reads the
    saved ``sin a``/``cos a``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, names: tuple[str, ...], dim: int) -> torch.Tensor:  # noqa: ANN001
        out = torch.stack([MAPPINGS[n](a) for n in names], dim)
        ctx.names, ctx.dim = names, dim
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        names, dim = ctx.names, ctx.dim
        (out,) = ctx.saved_tensors
        parts, grads = dict(zip(names, out.unbind(dim), strict=True)), dict(zip(names, g.unbind(dim), strict=True))

        def term(name: str) -> torch.Tensor:
            if name == "raw":
                return grads[name]
            if name == "sin":  # sin's backward: g · cos a
                return grads[name] * (parts["cos"] if "cos" in parts else torch.cos(_input(parts)))
            # cos's backward: g · (−sin a), as autograd forms it
            return grads[name] * (parts["sin"] if "sin" in parts else torch.sin(_input(parts))).neg()

        # autograd's order: the stack's own gradient (raw) arrives first, then the mappings, the last made first
        order = (["raw"] if "raw" in names else []) + [n for n in reversed(names) if n != "raw"]
        total = term(order[0])
        for name in order[1:]:
            total = total + term(name)
        return total, None, None


def _input(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return parts["raw"]


def stack_mappings(a: torch.Tensor, names: Sequence[str], dim: int) -> torch.Tensor:
    """``torch.stack([MAPPINGS[n](a) for n in names], dim)``; the fused backward where it applies (training, in
    eager mode, mappings among ``raw``/``sin``/``cos`` with ``sin``'s or ``cos``'s partner or the raw input kept)."""
    names = tuple(names)
    fusable = set(names) <= set(_FUSED) and len(set(names)) == len(names) and ("sin" in names or "cos" in names)
    has_partner = {"sin", "cos"} <= set(names) or "raw" in names
    if fusable and has_partner and a.requires_grad and torch.is_grad_enabled() and not capturing_graph():
        return _RawSinCos.apply(a, names, dim)
    return torch.stack([MAPPINGS[n](a) for n in names], dim)
