"""The aligned fp32 products compute the plain operators' values bit for bit, forward and backward."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtlrec.layers import aligned
from mtlrec.layers.interactions.cross import CrossNetwork


def _grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in leaves], out


def _assert_identical(ref, new):
    (out_r, grads_r, _), (out_n, grads_n, _) = ref, new
    assert torch.equal(out_r, out_n)
    for g_r, g_n in zip(grads_r, grads_n, strict=True):
        assert torch.equal(g_r, g_n)


@pytest.mark.parametrize(("batch", "d_in", "d_out"), [(512, 429, 429), (300, 2381, 64), (256, 96, 845), (64, 13, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(batch, d_in, d_out, bias):
    torch.manual_seed(0)
    x, w = torch.randn(batch, d_in), torch.randn(d_out, d_in)
    b = torch.randn(d_out) if bias else None
    args = (x, w, b) if bias else (x, w)
    ref = _grads(lambda *t: F.linear(*t), *args)
    new = _grads(lambda *t: aligned.linear(*t), *args)
    _assert_identical(ref, new)
    padded = d_out % 16 and d_out >= 64
    assert (new[2].stride(0) % 16 == 0) if padded else new[2].is_contiguous()


def test_padded_rows_are_used_for_input_gradients():
    x = torch.randn(256, 429, requires_grad=True)
    seen = {}
    y = x * 1.0  # a non-leaf, so its gradient is passed on as computed
    y.register_hook(lambda g: seen.update(stride=g.stride()))
    aligned.linear(y, torch.randn(64, 429)).sum().backward()
    assert seen["stride"] == (432, 1)


@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_products_match_bmm_and_baddbmm(shared_input):
    torch.manual_seed(1)
    n, batch, k, width = 3, 200, 429, 858
    a = torch.randn(batch, k).expand(n, batch, k) if shared_input else torch.randn(n, batch, k)
    w, bias = torch.randn(n, k, width), torch.randn(n, 1, width)
    _assert_identical(_grads(torch.bmm, a, w), _grads(aligned.matmul, a, w))
    _assert_identical(_grads(torch.baddbmm, bias, a, w), _grads(aligned.baddbmm, bias, a, w))


def test_matmul_with_a_transposed_weight_matches_autograd():
    torch.manual_seed(2)
    x, W = torch.randn(128, 429), torch.randn(429, 429)
    _assert_identical(_grads(lambda a, b: a @ b.T, x, W), _grads(lambda a, b: aligned.matmul(a, b.T), x, W))


def test_cross_network_keeps_its_formula():
    torch.manual_seed(3)
    net = CrossNetwork(429, num_layers=2, variant="v2")
    x0 = torch.randn(64, 429)

    def reference(x0):
        x = x0
        for layer in range(2):
            x = x0 * (x @ net.W[layer].T + net.bias[layer]) + x
        return x

    assert torch.equal(net(x0), reference(x0))


def test_plain_operators_outside_eager_fp32():
    x, w = torch.randn(32, 429), torch.randn(429, 429)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = aligned.linear(x, w)
    assert y.dtype == torch.bfloat16 and y.is_contiguous()
    assert aligned.linear(x.double(), w.double()).is_contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace is deprecated, still used for export
        traced = torch.jit.trace(aligned.Linear(429, 429), x)
    assert "AlignedLinear" not in str(traced.graph)


def test_linear_module_is_a_drop_in_for_nn_linear():
    torch.manual_seed(4)
    ref = nn.Linear(429, 100)
    torch.manual_seed(4)
    new = aligned.Linear(429, 100)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), new.state_dict().values(), strict=True))
    new.load_state_dict(ref.state_dict())
    x = torch.randn(8, 5, 429)  # 3-D input: nn.Linear's own path
    assert torch.equal(new(x), ref(x))
    assert torch.equal(new(x[:, 0]), ref(x[:, 0]))
