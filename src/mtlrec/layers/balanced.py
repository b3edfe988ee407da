"""Batched matrix products that keep every thread busy when the batch entries do not divide among the threads.

ATen's CPU ``bmm``/``baddbmm`` hands whole batch entries to threads: PLE's 3 experts of a level on 2 threads run
as two rounds with one thread idle in the second, and the product takes 1.4x as long as three ``mm`` calls that
each use both threads (``(3, 2048, 256) @ (3, 256, 256)`` on the 2-core benchmark machine: 6.4 vs 4.5 ms; 5
entries 1.16x). An even count is as fast batched, one thread sees no difference, and oneDNN's bf16 ``bmm`` splits
its work well (the loop is 4-11% slower there).

:func:`bmm` and :func:`baddbmm` run fp32 products with an uneven split as one ``mm``/``addmm`` per entry into one
output tensor (the same product per entry: the same values bit for bit on the CPUs measured, tested to float
tolerance) and are the plain operators otherwise. They serve the forward and backward of custom autograd Functions
on the eager paths, where autograd records nothing; with autograd recording they are the plain operators too.
"""

from __future__ import annotations

import torch


def _per_entry(n: int, *tensors: torch.Tensor) -> bool:
    threads = torch.get_num_threads()
    if threads == 1 or n % threads == 0 or n > 4 * threads:  # many entries: the last round is a small share
        return False
    if tensors[-1].device.type != "cpu" or tensors[-1].dtype != torch.float32:  # oneDNN's bf16 bmm splits well
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.bmm(a, b, out=out)``, as one ``mm`` per entry where the entries split unevenly over the threads."""
    n = a.shape[0]
    if not _per_entry(n, a, b):
        return torch.bmm(a, b) if out is None else torch.bmm(a, b, out=out)
    if out is None:
        out = a.new_empty(n, a.shape[1], b.shape[2])
    for i in range(n):
        torch.mm(a[i], b[i], out=out[i])
    return out


def baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.baddbmm(bias, a, b, out=out)`` for a bias ``(n or 1, 1 or M, N)``, as one ``addmm`` per entry where
    the entries split unevenly over the threads."""
    n = a.shape[0]
    if not _per_entry(n, bias, a, b):
        return torch.baddbmm(bias, a, b) if out is None else torch.baddbmm(bias, a, b, out=out)
    if out is None:
        out = a.new_empty(n, a.shape[1], b.shape[2])
    for i in range(n):
        torch.addmm(bias[i if bias.shape[0] > 1 else 0], a[i], b[i], out=out[i])
    return out
