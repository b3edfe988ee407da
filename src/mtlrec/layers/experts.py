"""A group of identical MLP experts evaluated together: one GEMM for all first layers, ``baddbmm`` after."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtlrec.layers import aligned, balanced
from mtlrec.layers.autocast import autocast_dtype
from mtlrec.layers.mlp import activation


class BatchedExperts(nn.Module):
    """``n`` MLP experts with the same shape, stored as stacked weights.

    ``forward(x)`` with ``x`` of shape ``(B, d)`` (all experts see the same input) or ``(n, B, d)`` (each its own)
    returns ``(n, B, hidden[-1])``. With a shared input the first layers of all experts are one
    ``(B, d) @ (d, n·h1)`` matrix product; later layers use one batched ``baddbmm``, never a loop over experts.
    Initialisation matches ``nn.Linear`` per expert.

    Two execution paths, the same function:

    * fp32 (no autocast): ``relu(x W + b)`` per layer with the bias added after the product, the original
      formulation. A shared input of a width that is not a multiple of 16 floats that needs a gradient is handed
      to the GEMM in column-major layout (an ``(d, B)`` copy, transposed back as a view): autograd's ``mm``
      backward then forms ``∂L/∂x`` as ``(W ∂L/∂y^T)^T`` into a ``(d, B)`` buffer instead of a ``(B, d)`` one with
      an odd leading dimension (d = 429 on the throughput config), 1.5x faster on the measured CPUs and
      bit-identical there. At an aligned width (608 on census) the detour only costs: the copy, and a gradient
      in batch-minor layout that every other reader's gradient of ``x`` is then added to on a slow mixed-layout
      path (DEPHN and MT-PHN census steps 1.07x faster without it; ``∂L/∂x`` equal to float rounding).
      The first layer's ``(B, n·h)`` product is used as an ``(n, B, h)`` view, blocks interleaved row by row; the
      later layers hand back its gradient in that layout (:class:`_LayoutKeepingBaddbmm`), so the ReLU backward
      reads gradient and output in one layout (mixed layouts ran 7x slower: 7 ms against 1 ms for ``(3, 2048,
      256)`` on the Xeon of docs/performance.md) and the first layer's backward needs no copy. Same bits.
    * under autocast (bf16 on CPU, bf16/fp16 on CUDA): the weights are cast once per forward, the bias is folded
      into the product (``addmm`` / ``baddbmm``) and the activation runs in place, so activations stay in the low
      precision between layers (no per-op casts back and forth, no fp32 copies of ``(n, B, h)`` blocks). With a
      shared input and more than one layer, the first layer is computed transposed, ``(n·h1, B) = W^T x^T``, the
      layout whose transpose ``baddbmm`` reads without a copy.
    """

    def __init__(
        self,
        num_experts: int,
        input_dim: int,
        hidden: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("experts need at least one hidden layer")
        self.num_experts = num_experts
        self.hidden = list(hidden)
        self.output_dim = self.hidden[-1]
        dims = [input_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for din, dout in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(din)
            self.weights.append(nn.Parameter(torch.empty(num_experts, din, dout).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, 1, dout).uniform_(-bound, bound)))
        self.act = activation(activation_name)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.inference_form = False  # use_inference_form: the caller may run each() instead of forward()

    def _activate(self, out: torch.Tensor) -> torch.Tensor:
        # ReLU in place: its input is a fresh product no backward needs (mm/addmm/baddbmm save their inputs only)
        out = out.relu_() if type(self.act) is nn.ReLU else self.act(out)
        return self.dropout(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = autocast_dtype(x.device.type)
        if low is not None and low != torch.float32:
            return self._forward_low(x, low)
        n = self.num_experts
        w0, b0 = self.weights[0], self.biases[0]
        batched = torch.baddbmm if aligned.capturing_graph() else _LayoutKeepingBaddbmm.apply
        if x.dim() == 2:
            d, h = w0.shape[1], w0.shape[2]
            flat = w0.permute(1, 0, 2).reshape(d, n * h)
            if x.requires_grad and torch.is_grad_enabled() and d % aligned.ALIGN:
                x = x.t().contiguous().t()  # column-major: see the class docstring
            out = (x @ flat).view(x.shape[0], n, h).transpose(0, 1) + b0
        else:
            out = batched(b0, x, w0)
        out = self._activate(out)
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            out = self._activate(batched(b, out, w))
        return out

    def _forward_low(self, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        """The autocast path: every layer one ``addmm``/``baddbmm`` in ``dt`` with the bias inside, in-place ReLU."""
        n = self.num_experts
        w0, b0 = self.weights[0], self.biases[0]
        x = x.to(dt)
        if x.dim() == 2:
            B, d, h = x.shape[0], w0.shape[1], w0.shape[2]
            if len(self.weights) > 1:  # (n·h, B) = W^T x^T + b, read by the next baddbmm as (n, B, h)
                wt = w0.transpose(1, 2).reshape(n * h, d).to(dt)
                out = torch.addmm(b0.reshape(n * h, 1).to(dt), wt, x.t())
                out = self._activate(out).view(n, h, B).transpose(1, 2)
            else:  # (B, n·h) = x W + b, viewed as (n, B, h)
                flat = w0.permute(1, 0, 2).reshape(d, n * h).to(dt)
                out = torch.addmm(b0.reshape(1, n * h).to(dt), x, flat)
                out = self._activate(out).view(B, n, h).transpose(0, 1)
        else:
            out = self._activate(_LayoutKeepingBaddbmm.apply(b0.to(dt), x, w0.to(dt)))
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            out = self._activate(_LayoutKeepingBaddbmm.apply(b.to(dt), out, w.to(dt)))
        return out

    def each(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The same experts on a shared input ``x (B, d)`` as a list of ``n`` contiguous ``(B, hidden[-1])``
        outputs, one ``addmm`` chain per expert: no ``(n, B, h)`` view to transpose or copy between layers. The
        inference form (mixed by :func:`~mtlrec.layers.gates.mix_each`; see :func:`use_inference_form`): at
        batch 8192 on CPU it scored MMoE 1.4x faster in fp32 and 1.6x in bf16 than :meth:`forward`, and its ONNX
        graph 1.3x faster in int8 (docs/export.md). Equal to :meth:`forward` to float rounding only, so training
        and the trainer's evaluation keep :meth:`forward`."""
        outs = []
        for i in range(self.num_experts):
            h = x
            for w, b in zip(self.weights, self.biases, strict=True):
                h = self.dropout(self.act(torch.addmm(b[i, 0], h, w[i])))
            outs.append(h)
        return outs


class _LayoutKeepingBaddbmm(torch.autograd.Function):
    """``baddbmm(bias, x, w)`` whose gradient for ``x`` comes back in ``x``'s layout, as autograd does for ``mm``
    but not for ``bmm``. For the fp32 first layer's interleaved ``(n, B, h)`` view, see the class docstring of
    :class:`BatchedExperts`; for the transposed first-layer output of the low-precision path (each expert's ``(B, h)``
    block column-major) it is formed as ``(w ∂L/∂y^T)^T``, so the first layer's backward reads it as its
    ``(n·h, B)`` gradient with no re-layout copy (an ``(n, h, B)`` copy per step before: 6 ms of a 80 ms bf16
    MMoE step on the measured CPU). The same products as autograd's, up to float rounding."""

    @staticmethod
    def forward(ctx, bias, x, w):  # noqa: ANN001, ANN205 - autograd.Function API
        ctx.save_for_backward(x, w)
        return balanced.baddbmm(bias, x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        grad_bias = grad.sum(1, keepdim=True) if ctx.needs_input_grad[0] else None
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            if x.stride(-2) == 1:  # column-major blocks: keep them so
                grad_x = balanced.bmm(w, grad.transpose(1, 2)).transpose(1, 2)
            elif x.stride(0) < x.stride(1):  # the experts' blocks interleaved row by row, (B, n, h) in memory
                grad_x = balanced.bmm(
                    grad, w.transpose(1, 2), out=x.new_empty(x.shape[1], x.shape[0], x.shape[2]).transpose(0, 1)
                )
            else:
                grad_x = balanced.bmm(grad, w.transpose(1, 2))
        if ctx.needs_input_grad[2]:
            grad_w = balanced.bmm(x.transpose(1, 2), grad)
        return grad_bias, grad_x, grad_w


def use_inference_form(module: nn.Module, on: bool = True) -> nn.Module:
    """Let every :class:`BatchedExperts` in ``module`` run in its inference form (:meth:`BatchedExperts.each`)
    where the model supports it and autograd is off; what exported graphs and the scoring engines run. Returns
    ``module``."""
    for m in module.modules():
        if isinstance(m, BatchedExperts):
            m.inference_form = on
    return module
