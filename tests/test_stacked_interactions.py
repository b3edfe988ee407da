"""The stacked (all branches at once) interaction modules compute what the per-branch modules compute."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrec.data.batches import BatchIterator
from mtlrec.layers.interactions import GatedCrossNetwork, HashCodebook, MaskNet
from mtlrec.layers.interactions.stacked import (
    StackedGatedCross,
    StackedHashCodebook,
    StackedLinear,
    StackedParallelMaskNet,
)
from mtlrec.models import dtn as dtn_module
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _check(per_branch: list[nn.Module], stacked: nn.Module, inputs: tuple, call=None):
    """Outputs equal, and each branch's parameter gradients equal its slice of the stacked gradients."""
    call = call or (lambda m, *a: m(*a))
    ref = torch.stack([call(m, *inputs) for m in per_branch])
    got = call(stacked, *inputs)
    torch.testing.assert_close(got, ref, **TOL)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (got * w).sum().backward()
    return ref, got


def test_stacked_linear_shared_and_per_branch_inputs():
    torch.manual_seed(0)
    lins = [nn.Linear(6, 4) for _ in range(3)]
    st = StackedLinear.from_modules(lins)
    x = torch.randn(5, 6)
    _check(lins, st, (x,))
    for k, lin in enumerate(lins):
        torch.testing.assert_close(st.weight.grad[k], lin.weight.grad.t(), **TOL)
        torch.testing.assert_close(st.bias.grad[k, 0], lin.bias.grad, **TOL)
    xs = torch.randn(3, 5, 6)
    torch.testing.assert_close(st(xs), torch.stack([lin(xs[k]) for k, lin in enumerate(lins)]), **TOL)


def test_stacked_gated_cross():
    torch.manual_seed(0)
    nets = [GatedCrossNetwork(7, num_layers=2) for _ in range(3)]
    st = StackedGatedCross.from_modules(nets)
    x = torch.randn(9, 7, requires_grad=True)
    _check(nets, st, (x,))
    for k, net in enumerate(nets):
        for ell in range(2):
            torch.testing.assert_close(st.weight.grad[ell, k, :, :7], net.w_cross[ell].weight.grad.t(), **TOL)
            torch.testing.assert_close(st.weight.grad[ell, k, :, 7:], net.w_gate[ell].weight.grad.t(), **TOL)
            torch.testing.assert_close(st.bias.grad[ell, k, 0], net.bias.grad[ell], **TOL)


def test_stacked_parallel_masknet():
    torch.manual_seed(0)
    F, D = 4, 3
    nets = [
        MaskNet(
            F, D, mode="parallel", num_blocks=2, block_dim=5, reduction_ratio=0.5, hidden=[6, 6], emb_layer_norm=False
        )
        for _ in range(3)
    ]
    st = StackedParallelMaskNet.from_modules(nets)
    E = torch.randn(8, F, D)
    _check(nets, st, (E,))
    for k, net in enumerate(nets):
        torch.testing.assert_close(st.block.w1.grad[2 * k : 2 * k + 2], net.blocks[0].w1.grad, **TOL)
        torch.testing.assert_close(st.mlp[0].weight.grad[k], net.mlp[0].weight.grad.t(), **TOL)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("shrink", ["sum", "global_attentive"])
def test_stacked_hash_codebook(shrink, sparse):
    """Outputs and gradients of the stacked codebooks (interleaved table, fused pair sums and their row-grouped
    backward) equal the per-branch modules'; 50 buckets for 6 x 6 x 2 lookups leave rows untouched."""
    torch.manual_seed(0)
    F, D = 4, 3
    hcs = [HashCodebook(F, D, num_buckets=50, shrink=shrink, sparse=sparse, seed=7) for _ in range(3)]
    st = StackedHashCodebook.from_modules(hcs)
    ids = torch.randint(0, 20, (6, F))
    E = torch.randn(6, F, D)
    _check(hcs, st, (ids, E))
    assert st.codebook.weight.grad.is_sparse == sparse
    dense = st.codebook.weight.grad.to_dense()
    assert (dense == 0).all(1).any()  # some rows untouched
    for k, hc in enumerate(hcs):
        torch.testing.assert_close(st.branch_view(dense, k), hc.codebook.weight.grad.to_dense(), **TOL)
        torch.testing.assert_close(st.restore.weight.grad[k], hc.restore_linear.weight.grad.t(), **TOL)


def test_stacked_codebook_loads_the_earlier_row_block_layout():
    """Checkpoints from before the interleaved table held the branches' codebooks as row blocks."""
    hcs = [HashCodebook(4, 3, num_buckets=20, seed=1) for _ in range(2)]
    st = StackedHashCodebook.from_modules(hcs)
    old = {k: v.clone() for k, v in st.state_dict().items()}
    old["codebook.weight"] = torch.cat([hc.codebook.weight.detach() for hc in hcs])  # (2 · 20, 3)
    fresh = StackedHashCodebook.from_modules([HashCodebook(4, 3, num_buckets=20, seed=1) for _ in range(2)])
    fresh.load_state_dict(old)
    for k, hc in enumerate(hcs):
        assert torch.equal(fresh.branch_view(fresh.codebook.weight.detach(), k), hc.codebook.weight.detach())


def test_stacked_codebooks_need_the_same_hashes():
    hcs = [HashCodebook(3, 2, num_buckets=10, seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="same hash functions"):
        StackedHashCodebook.from_modules(hcs)


@pytest.mark.parametrize("opts", [{}, {"fi_modules": ["memonet"], "memonet_shrink": "global_attentive"}])
def test_dtn_stacked_branches_equal_the_per_branch_modules(tiny_bundle_reg, monkeypatch, opts):
    """The whole DTN interaction block, stacked, against the per-branch modules it was built from."""
    recorded: list[list[nn.ModuleList]] = []
    original = dtn_module.StackedBranches.__init__

    def spy(self, branches, kinds):
        recorded.append(copy.deepcopy(list(branches)))
        original(self, branches, kinds)

    monkeypatch.setattr(dtn_module.StackedBranches, "__init__", spy)
    seed_everything(0)
    small = {"embedding_dim": 4, "tower_hidden": [8], "fi_dim": 16, "masknet_agg_dim": 16, "masknet_block_dim": 8}
    model = create_model("dtn", tiny_bundle_reg, masknet_hidden=[16], num_buckets=1000, **{**small, **opts})
    batch = next(iter(BatchIterator(tiny_bundle_reg.train, 32)))
    x = model.embed(batch)
    h, V = model.fi_outputs(x)
    branches = [b for group in recorded for b in group]
    ref = torch.stack([m(h, x.fields, x.ids) for branch in branches for m in branch], 1)
    torch.testing.assert_close(V, ref, **TOL)
    assert len(branches) == len(model.tasks) + model.num_shared


def test_cross_lookup_skips_the_backward_under_no_grad():
    """Scoring builds only the forward addressing; the output is the same as with autograd on."""
    torch.manual_seed(0)
    st = StackedHashCodebook.from_modules([HashCodebook(5, 3, num_buckets=40, seed=2) for _ in range(2)])
    ids = torch.randint(0, 30, (8, 5))
    E = torch.randn(8, 5, 3)
    with torch.no_grad():
        lookup = st.lookup(ids)
        scored = st(ids, E)
    assert lookup.rows is None and lookup.sources is None
    torch.testing.assert_close(scored, st(ids, E).detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="without its backward"):
        st(lookup, E)
