"""mtlrec.layers.balanced: per-entry products equal the batched operators, and step aside where they must."""

from __future__ import annotations

import pytest
import torch

from mtlrec.layers import balanced


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _operands(n: int = 3, m: int = 33, k: int = 20, p: int = 17):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, m, k, generator=g), torch.randn(n, k, p, generator=g)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_bmm_and_baddbmm_match_torch(two_threads, n):
    a, b = _operands(n)
    torch.testing.assert_close(balanced.bmm(a, b), torch.bmm(a, b))
    for bias in (torch.randn(n, 1, 17), torch.randn(1, 1, 17), torch.randn(n, 33, 17)):
        torch.testing.assert_close(balanced.baddbmm(bias, a, b), torch.baddbmm(bias, a, b))


def test_bmm_writes_a_strided_out(two_threads):
    """The experts' input gradient is written into an interleaved ``(B, n, h)`` buffer viewed as ``(n, B, h)``."""
    a, b = _operands()
    out = a.new_empty(33, 3, 17).transpose(0, 1)
    got = balanced.bmm(a, b, out=out)
    assert got.data_ptr() == out.data_ptr() and got.stride() == out.stride()
    torch.testing.assert_close(got, torch.bmm(a, b))


def test_per_entry_only_where_it_pays(two_threads, monkeypatch):
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *x, **kw: calls.append(1) or real_mm(*x, **kw))
    a, b = _operands(3)
    balanced.bmm(a, b)
    assert len(calls) == 3  # 3 entries on 2 threads: one mm each
    calls.clear()
    balanced.bmm(*_operands(4))  # an even split: one bmm
    balanced.bmm(a.bfloat16(), b.bfloat16())  # bf16: oneDNN splits well
    balanced.bmm(a.requires_grad_(), b)  # autograd recording: the plain operator keeps the graph
    assert calls == []
    torch.set_num_threads(1)
    balanced.bmm(a.detach(), b)
    assert calls == []


def test_grad_recording_keeps_the_graph(two_threads):
    a, b = _operands()
    a.requires_grad_()
    balanced.baddbmm(torch.zeros(3, 1, 17), a, b).sum().backward()
    torch.testing.assert_close(a.grad, b.sum(-1).unsqueeze(1).expand(3, 33, 20))
