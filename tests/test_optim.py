"""RowwiseAdam (lazy row-wise Adam) against dense Adam, and the optimizer split used by the trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrec.train.optim import RowwiseAdam, build_optimizers, split_parameters


def _reference_lazy_adam(p, grads, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.0):
    """Dense Adam (torch's formula) applied row by row, only to rows with a gradient in the step."""
    p = p.clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        touched = sorted({int(r) for r in g.coalesce().indices()[0]})
        dense_g = g.to_dense()
        for r in touched:
            gr = dense_g[r] + wd * p[r]
            m[r] = betas[0] * m[r] + (1 - betas[0]) * gr
            v[r] = betas[1] * v[r] + (1 - betas[1]) * gr * gr
            m_hat = m[r] / (1 - betas[0] ** t)
            denom = v[r].sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
            p[r] = p[r] - lr * m_hat / denom
    return p, m, v


def _sparse_grad(rows: list[int], num_rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.tensor([rows], dtype=torch.long)
    vals = torch.randn(len(rows), dim, generator=gen, dtype=torch.float64)
    return torch.sparse_coo_tensor(idx, vals, (num_rows, dim), check_invariants=True)


def test_rowwise_adam_matches_dense_adam_on_touched_rows_with_duplicates():
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    # steps with repeated rows (summed), rows never touched (5, 11), rows touched only late
    patterns = [[0, 1, 1, 4], [2, 4, 4, 4, 7], [0, 9], [1, 2, 3, 10, 10], [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]]
    grads = [_sparse_grad(r, 12, 3, gen) for r in patterns]
    p = nn.Parameter(init.clone())
    opt = RowwiseAdam([p], lr=1e-2)
    for g in grads:
        p.grad = g
        opt.step()
    ref, m, v = _reference_lazy_adam(init, grads, lr=1e-2)
    torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)
    mv = opt.state[p]["moments"]
    torch.testing.assert_close(mv[:, :3], m)
    torch.testing.assert_close(mv[:, 3:], v)
    # untouched rows: parameters and moments unchanged
    assert torch.equal(p.detach()[[5, 11]], init[[5, 11]])
    assert torch.count_nonzero(mv[[5, 11]]) == 0


def test_rowwise_adam_weight_decay_on_touched_rows():
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    grads = [_sparse_grad(r, 6, 2, gen) for r in ([0, 3], [3, 5, 5], [1])]
    p = nn.Parameter(init.clone())
    opt = RowwiseAdam([p], lr=5e-2, weight_decay=0.1)
    for g in grads:
        p.grad = g
        opt.step()
    ref, _, _ = _reference_lazy_adam(init, grads, lr=5e-2, wd=0.1)
    torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)


def test_rowwise_adam_dense_gradient_equals_torch_adam():
    gen = torch.Generator().manual_seed(2)
    a = nn.Parameter(torch.randn(5, 4, generator=gen))
    b = nn.Parameter(a.detach().clone())
    opt_a, opt_b = RowwiseAdam([a], lr=1e-2), torch.optim.Adam([b], lr=1e-2)
    for _ in range(4):
        g = torch.randn(5, 4, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_rowwise_adam_through_sparse_embedding_matches_reference():
    torch.manual_seed(3)
    emb = nn.Embedding(50, 4, sparse=True).double()
    init = emb.weight.detach().clone()
    opt = RowwiseAdam(emb.parameters(), lr=1e-2)
    grads = []
    for _ in range(3):
        ids = torch.randint(0, 50, (16, 3))
        opt.zero_grad()
        (emb(ids) ** 2).sum().backward()
        grads.append(emb.weight.grad.clone())
        opt.step()
    ref, _, _ = _reference_lazy_adam(init, grads, lr=1e-2)
    torch.testing.assert_close(emb.weight.detach(), ref, rtol=1e-10, atol=1e-12)


def test_rowwise_adam_state_dict_resume_is_exact():
    torch.manual_seed(4)

    def run(emb, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            ids = torch.randint(0, 40, (32,), generator=g)
            opt.zero_grad()
            emb(ids).sum().backward()
            opt.step()

    emb = nn.Embedding(40, 3, sparse=True)
    opt = RowwiseAdam(emb.parameters(), lr=1e-2)
    run(emb, opt, 3, 0)
    saved_model, saved_opt = copy.deepcopy(emb.state_dict()), copy.deepcopy(opt.state_dict())
    run(emb, opt, 2, 1)
    emb2 = nn.Embedding(40, 3, sparse=True)
    emb2.load_state_dict(saved_model)
    opt2 = RowwiseAdam(emb2.parameters(), lr=1e-2)
    opt2.load_state_dict(saved_opt)
    run(emb2, opt2, 2, 1)
    assert torch.equal(emb.weight, emb2.weight)
    assert torch.equal(opt.state[emb.weight]["moments"], opt2.state[emb2.weight]["moments"])
    assert float(opt2.state[emb2.weight]["step"]) == 5


def test_rowwise_adam_rejects_bad_hyperparameters():
    p = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError):
        RowwiseAdam([p], lr=-1.0)
    with pytest.raises(ValueError):
        RowwiseAdam([p], betas=(1.0, 0.9))


def test_build_optimizers_puts_sparse_tables_in_rowwise_adam():
    model = nn.Sequential()
    model.emb = nn.Embedding(10, 2, sparse=True)
    model.lin = nn.Linear(2, 1)
    dense, sparse = split_parameters(model)
    assert [id(p) for p in sparse] == [id(model.emb.weight)]
    assert len(dense) == 2
    opts = build_optimizers(model, 1e-3)
    assert isinstance(opts[0], torch.optim.Adam) and isinstance(opts[1], RowwiseAdam)


@pytest.mark.parametrize(
    ("rows", "lookups"), [(500, 4000), (100_000, 3000), (2000, 60_000), (50_000, 60_000), (500, 40_000)]
)
def test_touched_rows_equal_coalesce_bit_for_bit(rows, lookups):
    """Both ways of summing (the sort; the table-sized buffer in the last three, with rows left untouched in the
    fourth) give coalesce()'s rows and sums bit for bit (committed results reproduce)."""
    from mtlrec.train.optim import _touched_rows

    torch.manual_seed(0)
    emb = torch.nn.Embedding(rows, 3, sparse=True)
    ids = torch.randint(0, rows, (lookups,))
    (emb(ids) * torch.randn(lookups, 3)).sum().backward()
    ref = emb.weight.grad.coalesce()
    got_rows, got = _touched_rows(emb.weight.grad)
    assert torch.equal(got_rows, ref.indices()[0])
    assert torch.equal(got, ref.values())


def test_sort_is_stable_from_the_size_the_buffer_path_relies_on():
    from mtlrec.train.optim import STABLE_SORT_MIN

    ids = torch.randint(0, 100, (STABLE_SORT_MIN,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids.sort().indices, ids.sort(stable=True).indices)
