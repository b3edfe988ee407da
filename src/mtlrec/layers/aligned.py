"""fp32 matrix products that write their outputs with row strides padded to 64 bytes.

MKL's ``sgemm`` on AVX-512 CPUs runs up to twice as slow when the rows of its output do not start on 64-byte
boundaries, i.e. when the output has a width that is not a multiple of 16 floats: ``(2048, 429) @ (429, 429)`` ran
at 97–113 GFLOP/s on 2 threads of the benchmark machine, the same product into a ``(2048, 432)`` buffer at 137–156,
and a linear layer's input gradient ``(2048, 64) @ (64, 2381)`` at 55–63 against 109 (``docs/performance.md``).
Such widths are the rule, not the exception, in recommendation models: a flat input of 26 fields × 16 plus 13
numeric columns is 429 wide, and every first layer's input gradient, every full-rank cross layer and every tower
over a concatenation has that width.

The functions here compute the very same products (the same ``addmm``/``mm`` calls on the same operands, so the
same values bit for bit: only where the result is stored differs) into a buffer whose rows are padded to a multiple
of 16 floats and return the ``(M, N)`` view of it, in the forward pass and for the input gradient of the backward
pass. Outside fp32 training or inference in eager mode (autocast, other dtypes, tracing, scripting, export) they
are the plain operators.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mtlrec.layers import balanced

ALIGN = 16  # floats: 64 bytes, one AVX-512 register and one cache line


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _needs_alignment(*widths: int) -> bool:
    # below 64 floats a row is at most four cache lines and padding mostly adds memory traffic
    return any(w % ALIGN and w >= 64 for w in widths)


def capturing_graph() -> bool:
    """True while tracing, scripting, exporting or compiling: the fast paths built on custom autograd Functions
    step aside for the plain operators there."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _eager_fp32(*tensors: torch.Tensor) -> bool:
    if capturing_graph():
        return False
    t = tensors[0]
    if t.device.type != "cpu" or torch.is_autocast_enabled(t.device.type):
        return False
    return all(x.dtype == torch.float32 for x in tensors)


def _mm_into_padded(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (plus ``bias`` fused, as ``addmm``/``baddbmm``) into rows padded to :data:`ALIGN` floats; the
    ``(M, N)`` or ``(n, M, N)`` view. 2-D operands use ``mm``, 3-D ones ``bmm``."""
    n = b.shape[-1]
    out = a.new_empty(*a.shape[:-1], _padded(n))[..., :n]
    if a.dim() == 3:
        return balanced.bmm(a, b, out=out) if bias is None else balanced.baddbmm(bias, a, b, out=out)
    return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)


class _AlignedLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for 2-D fp32 ``x``; the output and ``∂L/∂x`` in padded rows.

    The backward pass forms the gradients with the products autograd uses for ``addmm(bias, x, weight.t())``:
    ``∂L/∂x = g W``, ``∂L/∂W = g^T x``, ``∂L/∂b = Σ_rows g``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: ANN001, ANN205 - autograd.Function signature
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm_into_padded(x, weight.t(), bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _mm_into_padded(grad, weight) if need_x else None
        grad_w = grad.t().mm(x) if need_w else None
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class _AlignedProduct(torch.autograd.Function):
    """``a @ b`` (``mm`` or ``bmm``), or ``baddbmm(bias, a, b)`` with a row bias ``(n, 1, N)``, in fp32; the output
    and ``∂L/∂a`` in padded rows, ``∂L/∂b`` and ``∂L/∂bias`` as autograd forms them."""

    @staticmethod
    def forward(ctx, a, b, bias):  # noqa: ANN001, ANN205
        ctx.save_for_backward(a, b)
        return _mm_into_padded(a, b, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        a, b = ctx.saved_tensors
        need_a, need_b, need_bias = ctx.needs_input_grad
        grad_a = _mm_into_padded(grad, b.transpose(-2, -1)) if need_a else None
        grad_b = _weight_grad(a, grad, b) if need_b else None
        grad_bias = grad.sum(1, keepdim=True) if need_bias else None
        return grad_a, grad_b, grad_bias


def _weight_grad(a: torch.Tensor, grad: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() == 3:
        return balanced.bmm(a.transpose(1, 2), grad)
    # autograd forms ∂L/∂b in b's own layout: a column-major b (a transposed weight) gets (g^T a)^T
    if b.stride(0) == 1 and b.stride(1) == b.shape[0]:
        return grad.t().mm(a).t()
    return a.t().mm(grad)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with 64-byte aligned output and input-gradient rows where the widths need it (2-D fp32, eager)."""
    if x.dim() == 2 and _eager_fp32(x, weight) and _needs_alignment(*weight.shape):
        return _AlignedLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for two 2-D or two 3-D operands (``mm`` / ``bmm``) with 64-byte aligned output and ``∂L/∂a`` rows
    where the widths need it (fp32, eager)."""
    if a.dim() == b.dim() in (2, 3) and _eager_fp32(a, b) and _needs_alignment(a.shape[-1], b.shape[-1]):
        return _AlignedProduct.apply(a, b, None)
    return a @ b


def baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(bias, a, b)`` for ``bias (n, 1, N)`` with 64-byte aligned output and ``∂L/∂a`` rows where
    the widths need it (fp32, eager)."""
    row_bias = bias.dim() == 3 and bias.shape[1] == 1  # the shape whose gradient the Function sums
    if row_bias and _eager_fp32(bias, a, b) and _needs_alignment(a.shape[-1], b.shape[-1]):
        return _AlignedProduct.apply(a, b, bias)
    return torch.baddbmm(bias, a, b)


class Linear(torch.nn.Linear):
    """``nn.Linear`` (the same parameters, initialisation and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias) if x.dim() == 2 else super().forward(x)
