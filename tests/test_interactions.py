from __future__ import annotations

import pytest
import torch

from mtlrec.layers.interactions import (
    CIN,
    FINT,
    BiInteraction,
    CrossNetwork,
    FieldSelfAttention,
    GatedCrossNetwork,
    HashCodebook,
    MaskBlock,
    MaskNet,
    cross_hash,
)

B, F, D = 5, 4, 6


@pytest.fixture
def E():
    torch.manual_seed(0)
    return torch.randn(B, F, D)


def test_cross_v1_matches_hand_formula():
    torch.manual_seed(0)
    net = CrossNetwork(3, num_layers=2, variant="v1")
    with torch.no_grad():
        net.w.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]))
        net.bias.copy_(torch.tensor([[0.1, 0.2, 0.3], [0.0, -0.1, 0.0]]))
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    # layer 1: x0 * (x0·w0 = 1 - 3 = -2) + b0 + x0 = [-2,-4,-6] + [.1,.2,.3] + [1,2,3] = [-0.9,-1.8,-2.7]
    x1 = torch.tensor([[-0.9, -1.8, -2.7]])
    # layer 2: x1·w1 = -0.45 - 0.9 = -1.35 → x0 * -1.35 + b1 + x1
    x2 = x0 * -1.35 + torch.tensor([[0.0, -0.1, 0.0]]) + x1
    torch.testing.assert_close(net(x0), x2)


def test_cross_v2_full_rank_formula_and_low_rank_params():
    torch.manual_seed(0)
    net = CrossNetwork(5, num_layers=1, variant="v2")
    x0 = torch.randn(2, 5)
    torch.testing.assert_close(net(x0), x0 * (x0 @ net.W[0].T + net.bias[0]) + x0)
    d, r, n = 10, 3, 2
    low = CrossNetwork(d, num_layers=n, variant="v2", low_rank=r)
    assert sum(p.numel() for p in low.parameters()) == n * (2 * d * r + d)
    assert low(torch.randn(4, d)).shape == (4, d)
    mix = CrossNetwork(d, num_layers=n, variant="v2", low_rank=r, num_experts=4)
    assert sum(p.numel() for p in mix.parameters()) == n * (4 * (2 * d * r + r * r) + d + d * 4)
    x = torch.randn(4, d, requires_grad=True)
    mix(x).sum().backward()
    assert all(p.grad is not None for p in mix.parameters())
    with pytest.raises(ValueError):
        CrossNetwork(d, variant="v1", low_rank=2)


def test_gdcn_gate_in_unit_interval_and_formula():
    torch.manual_seed(0)
    net = GatedCrossNetwork(8, num_layers=3)
    x = torch.randn(16, 8)
    out = net(x)
    assert out.shape == (16, 8)
    assert len(net.last_gates) == 3
    for g in net.last_gates:
        assert ((g > 0) & (g < 1)).all()
    one = GatedCrossNetwork(8, num_layers=1)
    wc, wg, b = one.w_cross[0], one.w_gate[0], one.bias[0]
    torch.testing.assert_close(one(x), x * (wc(x) + b) * torch.sigmoid(wg(x)) + x)
    assert ((b >= 0) & (b <= 1)).all()  # U(0, 1) bias as in the official code


def test_fint_shape_and_identity(E):
    fint = FINT(F, D, num_layers=3)
    assert fint(E).shape == (B, F, D)
    with torch.no_grad():
        fint.W.zero_()
        fint.U.fill_(1.0)
    torch.testing.assert_close(fint(E), E)
    # one layer, W = identity, U = 0: v^1 = v^0 ⊙ v^0
    one = FINT(F, D, num_layers=1)
    with torch.no_grad():
        one.W.copy_(torch.eye(F).unsqueeze(0))
        one.U.zero_()
    torch.testing.assert_close(one(E), E * E)


def test_fint_follows_the_layer_formula_forward_and_backward(E):
    """FINT eq. 3-4: V^l = V^{l-1} ⊙ (W^{l-1} V^0) + U^{l-1} ⊙ V^{l-1}, as written, against the fused form."""
    torch.manual_seed(0)
    fint = FINT(F, D, num_layers=3)
    with torch.no_grad():
        fint.U.uniform_(0.5, 1.5)

    def reference(E0):
        v = E0
        for layer in range(3):
            v = v * torch.einsum("ij,bjd->bid", fint.W[layer], E0) + fint.U[layer].unsqueeze(-1) * v
        return v

    grads = []
    for fn in (reference, fint):
        x = E.detach().clone().requires_grad_(True)
        fint.zero_grad()
        out = fn(x)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), x.grad, fint.W.grad.clone(), fint.U.grad.clone()))
    for ref, new in zip(*grads, strict=True):
        torch.testing.assert_close(new, ref)


def test_field_self_attention(E):
    att = FieldSelfAttention(D, num_heads=2, num_layers=2)
    assert att.out_dim == D and att(E).shape == (B, F, D)
    wide = FieldSelfAttention(D, num_heads=3, head_dim=4, residual=False)
    assert wide.out_dim == 12 and wide(E).shape == (B, F, 12)
    with pytest.raises(ValueError):
        FieldSelfAttention(5, num_heads=2)


def test_cin_shapes(E):
    cin = CIN(F, D, layer_sizes=(8, 6), split_half=True)
    assert cin.out_dim == 4 + 6 and cin(E).shape == (B, 10)
    direct = CIN(F, D, layer_sizes=(8, 6), split_half=False)
    assert direct(E).shape == (B, 14)


def test_cin_first_layer_formula(E):
    cin = CIN(F, D, layer_sizes=(3,))
    W = cin.filters[0].weight.view(3, F, F)
    expected = torch.einsum("hij,bid,bjd->bhd", W, E, E) + cin.filters[0].bias.view(1, 3, 1)
    torch.testing.assert_close(cin(E), expected.sum(-1))


def test_bi_interaction_matches_pairwise_sum(E):
    pairs = sum(E[:, i] * E[:, j] for i in range(F) for j in range(i + 1, F))
    torch.testing.assert_close(BiInteraction()(E), pairs)


def test_masknet_serial_and_parallel(E):
    ser = MaskNet(F, D, mode="serial", num_blocks=3, block_dim=7)
    assert ser.out_dim == 7 and ser(E).shape == (B, 7)
    par = MaskNet(F, D, mode="parallel", num_blocks=3, block_dim=7)
    assert par.out_dim == 21 and par(E).shape == (B, 21)
    par_mlp = MaskNet(F, D, mode="parallel", num_blocks=1, block_dim=7, hidden=[5])
    assert par_mlp(E).shape == (B, 5)
    out = par(E)
    out.sum().backward()
    assert all(p.grad is not None for p in par.parameters())


def test_parallel_mask_blocks_match_single_blocks():
    torch.manual_seed(0)
    stacked = MaskBlock(6, 6, 4, num_parallel=3)
    v = torch.randn(5, 6)
    out = stacked(v, v)
    assert out.shape == (3, 5, 4)
    single = MaskBlock(6, 6, 4)
    state = {k: p[1:2] for k, p in stacked.state_dict().items()}
    single.load_state_dict(state)
    torch.testing.assert_close(single(v, v), out[1])
    # mask aggregation width is reduction_ratio × masked width
    assert stacked.w1.shape == (3, 6, 12)


@pytest.mark.parametrize("restore", ["linear", "attentive"])
@pytest.mark.parametrize("shrink", ["sum", "global_attentive"])
def test_hash_codebook_shapes_and_grads(E, restore, shrink):
    hc = HashCodebook(F, D, num_buckets=97, num_hashes=2, restore=restore, shrink=shrink, code_out_dim=3)
    ids = torch.randint(0, 1000, (B, F))
    out = hc(ids, E)
    assert hc.out_dim == F * 3 and out.shape == (B, F * 3)
    out.sum().backward()
    assert all(p.grad is not None for p in hc.parameters())


def test_hash_codebook_deterministic_and_in_range():
    ids = torch.randint(-(2**40), 2**40, (64, F))
    a = HashCodebook(F, D, num_buckets=1000, num_hashes=3, seed=1)
    b = HashCodebook(F, D, num_buckets=1000, num_hashes=3, seed=1)
    ba, bb = a.buckets(ids), b.buckets(ids)
    assert ba.shape == (64, F * (F - 1) // 2, 3)
    assert torch.equal(ba, bb)
    assert ba.min() >= 0 and ba.max() < 1000
    assert not torch.equal(ba[..., 0], ba[..., 1])  # different hash functions
    # the same values in a different pair of fields give a different token
    same = torch.full((2, F), 5)
    assert len(set(a.buckets(same)[0, :, 0].tolist())) > 1
    private = HashCodebook(F, D, num_buckets=10, num_hashes=2, hash_share=False)
    bp = private.buckets(ids)
    assert (bp[..., 1] >= 10).all() and (bp < 20).all()
    c = HashCodebook(F, D, num_buckets=1000, num_hashes=3, seed=2)
    assert not torch.equal(c.buckets(ids), ba)


def test_hash_codebook_buckets_are_cross_hash_bit_for_bit():
    """The factored per-field hashing equals the per-pair definition on any int64 values, every hash, both
    sharings (what the committed DTN runs were trained with)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(-(2**62), 2**62, (256, 7), generator=g)
    ids[:8] = torch.tensor([0, 1, -1, 2**31 - 1, 2**31, -(2**63), 2**63 - 1])
    for seed, buckets, hashes, share in [(0, 100_000, 2, True), (5, 97, 3, True), (1, 1000, 2, False)]:
        hc = HashCodebook(7, D, num_buckets=buckets, num_hashes=hashes, seed=seed, hash_share=share)
        ref = cross_hash(ids[:, hc.left], ids[:, hc.right], hc.pair_code, hc.coeffs, buckets)
        if not share:
            ref = ref + torch.arange(hashes) * buckets
        assert torch.equal(hc.buckets(ids).long(), ref)


def test_hash_codebook_sum_shrink_formula(E):
    hc = HashCodebook(3, D, num_buckets=50, num_hashes=1, shrink="sum")
    ids = torch.randint(0, 100, (B, 3))
    E3 = E[:, :3]
    v = hc.restore_linear(hc.codebook(hc.buckets(ids)).flatten(2))  # pairs (0,1), (0,2), (1,2)
    z = torch.stack([v[:, 0] + v[:, 1], v[:, 0] + v[:, 2], v[:, 1] + v[:, 2]], 1)
    torch.testing.assert_close(hc(ids, E3), z.flatten(1))
