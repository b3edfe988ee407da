"""Fast formulations against the plain ones they replace (issue 14): fp32 bit for bit, autocast bf16 within a
bf16 tolerance of fp32, forward outputs and gradients alike."""

from __future__ import annotations

import pytest
import torch

from mtlrec.layers.experts import BatchedExperts


def _reference_experts(ex: BatchedExperts, x: torch.Tensor) -> torch.Tensor:
    """The original formulation: ``relu(x W + b)`` per layer, first layer one GEMM over the stacked weights."""
    n = ex.num_experts
    w0, b0 = ex.weights[0], ex.biases[0]
    if x.dim() == 2:
        d, h = w0.shape[1], w0.shape[2]
        out = (x @ w0.permute(1, 0, 2).reshape(d, n * h)).view(x.shape[0], n, h).transpose(0, 1) + b0
    else:
        out = torch.baddbmm(b0, x, w0)
    out = torch.relu(out)
    for w, b in zip(list(ex.weights)[1:], list(ex.biases)[1:], strict=True):
        out = torch.relu(torch.baddbmm(b, out, w))
    return out


def _grads(module: torch.nn.Module, x: torch.Tensor, fn, precision: str = "fp32"):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = fn(x)
    out = out.float()
    torch.manual_seed(1)
    (out * torch.randn_like(out)).sum().backward()
    return out.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("hidden", [[16, 8], [16], [12, 8, 4]])
@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("d", [29, 32])  # an odd input width (as the throughput config's 429) and an aligned one
def test_batched_experts_fp32_bit_identical(hidden, shared_input, d):
    torch.manual_seed(0)
    n, B = 4, 64
    ex = BatchedExperts(n, d, hidden)
    x = torch.randn(B, d) if shared_input else torch.randn(n, B, d)
    new = _grads(ex, x, ex)
    ref = _grads(ex, x, lambda t: _reference_experts(ex, t))
    assert torch.equal(new[0], ref[0]) and torch.equal(new[1], ref[1])
    assert all(torch.equal(a, b) for a, b in zip(new[2], ref[2], strict=True))
    if shared_input:  # column-major only at an odd width: an aligned one keeps the gradient in the input's layout
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ex(leaf).sum(), leaf)  # as formed (.grad would be made row-major)
        assert (grad.stride(0) == 1) == bool(d % 16)


def test_batched_experts_fp32_bit_identical_at_benchmark_size():
    """The column-major input only changes which GEMM forms ``dL/dx`` (the transposed product): same bits."""
    torch.manual_seed(0)
    ex = BatchedExperts(8, 429, [256, 128])
    x = torch.randn(512, 429)
    new = _grads(ex, x, ex)
    ref = _grads(ex, x, lambda t: _reference_experts(ex, t))
    assert torch.equal(new[0], ref[0]) and torch.equal(new[1], ref[1])
    assert all(torch.equal(a, b) for a, b in zip(new[2], ref[2], strict=True))


@pytest.mark.parametrize("hidden", [[64, 32], [64]])
@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_experts_bf16_path_close_to_fp32(hidden, shared_input):
    """Under bf16 autocast the experts run in bf16 end to end (bias inside the product, in-place ReLU): outputs and
    gradients within bf16 rounding of fp32, and as close as the old autocast formulation."""
    torch.manual_seed(0)
    n, d, B = 4, 61, 256
    ex = BatchedExperts(n, d, hidden)
    x = torch.randn(B, d) if shared_input else torch.randn(n, B, d)
    fast = _grads(ex, x, ex, "bf16")
    old = _grads(ex, x, lambda t: _reference_experts(ex, t), "bf16")
    ref = _grads(ex, x, lambda t: _reference_experts(ex, t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ex(x).dtype == torch.bfloat16
    for got, base in ((fast, ref), (old, ref)):
        assert _rel(got[0], base[0]) < 1e-2
        # gradients pass through bf16 products and ReLU masks that flip near 0: a few % in norm
        assert _rel(got[1], base[1]) < 0.1
        assert all(_rel(a, b) < 0.1 for a, b in zip(got[2], base[2], strict=True))
    # the fast path is not less exact than the old autocast one
    assert _rel(fast[0], ref[0]) < 1.5 * _rel(old[0], ref[0]) + 1e-3
    assert _rel(fast[1], ref[1]) < 1.5 * _rel(old[1], ref[1]) + 1e-3


def test_stacked_codebook_shrink_first_matches_restore_first():
    """MemoNet's sum shrinking after linear restoring (the per-branch modules) equals restoring after shrinking
    (the stacked fast path), outputs and gradients, in fp32 and under bf16 autocast (the shrink stays fp32)."""
    from mtlrec.layers.interactions import HashCodebook
    from mtlrec.layers.interactions.stacked import StackedHashCodebook

    torch.manual_seed(0)
    F, D, B = 9, 4, 32
    hcs = [HashCodebook(F, D, num_buckets=200, shrink="sum", sparse=True, seed=3) for _ in range(2)]
    st = StackedHashCodebook.from_modules(hcs)
    ids = torch.randint(0, 50, (B, F))
    E = torch.randn(B, F, D)
    ref = torch.stack([hc(ids, E) for hc in hcs])
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    for precision in ("fp32", "bf16"):
        st.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            got = st(ids, E)
        (got.float() * g).sum().backward()
        if precision == "fp32":

            def close(a, b):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:

            def close(a, b):
                assert _rel(a, b) < 2e-2  # bf16 products: about 1% in norm

        close(got.float(), ref)
        dense = st.codebook.weight.grad.to_dense()
        for k, hc in enumerate(hcs):
            close(st.branch_view(dense, k), hc.codebook.weight.grad.to_dense())
            close(st.restore.weight.grad[k], hc.restore_linear.weight.grad.t())


def test_cast_once_equals_autocast_casting_each_product():
    """A backbone input cast once (``to_autocast``) gives every gate the bits autocast's own per-op cast gives."""
    from mtlrec.layers.autocast import to_autocast
    from mtlrec.layers.gates import Gate

    torch.manual_seed(0)
    x = torch.randn(16, 29)
    gate = Gate(29, 4)
    assert to_autocast(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        once = to_autocast(x)
        assert once.dtype == torch.bfloat16
        assert torch.equal(gate(once), gate(x))


def test_softmax_helper_is_torch_softmax_in_fp32_and_fp32_inside_bf16():
    from mtlrec.layers.autocast import softmax

    torch.manual_seed(0)
    s = torch.randn(8, 2, 5, 5)
    assert torch.equal(softmax(s), torch.softmax(s, -1))
    got = softmax(s.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), torch.softmax(s.bfloat16().float(), -1).bfloat16().float())


def test_stacked_gated_cross_stays_in_bf16_under_autocast_and_close_to_fp32():
    """GDCN's stacked layers cast input, weights and biases once under autocast: the output is bf16 (no fp32
    round trips between layers) and within bf16 rounding of the fp32 result, gradients included."""
    from mtlrec.layers.interactions import GatedCrossNetwork
    from mtlrec.layers.interactions.stacked import StackedGatedCross

    torch.manual_seed(0)
    st = StackedGatedCross.from_modules([GatedCrossNetwork(24, 2) for _ in range(3)])
    x = torch.randn(64, 24, requires_grad=True)
    ref = st(x)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    ref_grads = [x.grad.clone(), st.weight.grad.clone()]
    x.grad, st.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = st(x)
    assert got.dtype == torch.bfloat16
    (got.float() * g).sum().backward()
    assert _rel(got.float(), ref) < 2e-2
    assert _rel(x.grad, ref_grads[0]) < 3e-2 and _rel(st.weight.grad, ref_grads[1]) < 3e-2


def test_dephn_tower_inputs_are_assembled_in_bf16_under_autocast(tiny_bundle):
    """DEPHN hands its towers bf16 inputs under autocast (no cast of the whole concatenation per tower) that
    match the fp32 tower inputs to bf16 rounding; in fp32 the backbone is what it was."""
    from mtlrec.data.batches import BatchIterator
    from mtlrec.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("dephn", tiny_bundle, embedding_dim=4, num_dnn_experts=2, dnn_hidden=[8]).eval()
    batch = next(iter(BatchIterator(tiny_bundle.train, 64, shuffle=False).epoch(0)))
    with torch.no_grad():
        ref = model.backbone(model.embed(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.backbone(model.embed(batch))
    assert all(z.dtype == torch.float32 for z in ref)
    assert all(z.dtype == torch.bfloat16 for z in low)
    assert all(_rel(a, b) < 2e-2 for a, b in zip(low, ref, strict=True))


@pytest.mark.parametrize("layout", ["column_major", "interleaved", "row_major"])
def test_layout_keeping_baddbmm_matches_autograd_and_keeps_the_input_layout(layout):
    """The experts' later layers: outputs and gradients as torch.baddbmm's, and the input's gradient in the input's
    layout: column-major blocks (the low-precision first layer), blocks interleaved row by row (the fp32 first
    layer's ``(B, n, h)`` product viewed as ``(n, B, h)``: the ReLU backward then reads its gradient and its saved
    output in one layout, and the first layer's backward needs no re-layout copy) or plain."""
    from mtlrec.layers.experts import _LayoutKeepingBaddbmm

    torch.manual_seed(0)
    n, B, h, k = 3, 16, 8, 5
    views = {
        "column_major": lambda: torch.randn(n, h, B).transpose(1, 2),
        "interleaved": lambda: torch.randn(B, n, h).transpose(0, 1),
        "row_major": lambda: torch.randn(n, B, h),
    }
    x = views[layout]().detach().requires_grad_(True)
    w = torch.randn(n, h, k, requires_grad=True)
    b = torch.randn(n, 1, k, requires_grad=True)
    g = torch.randn(n, B, k)
    got = _LayoutKeepingBaddbmm.apply(b, x, w)
    grads = torch.autograd.grad((got * g).sum(), (b, x, w))
    ref = torch.baddbmm(b, x, w)
    ref_grads = torch.autograd.grad((ref * g).sum(), (b, x, w))
    torch.testing.assert_close(got, ref)
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    assert grads[1].stride() == x.stride()


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_gate_mix_backward_is_autograds_einsum_bit_for_bit(layout):
    from mtlrec.layers.gates import _Mix, mix

    torch.manual_seed(0)
    n, batch, h = 3, 256, 64
    weights = torch.softmax(torch.randn(batch, n + 1), -1)[:, 1:]  # a column slice, as PLE's gates pass them
    # PLE's experts arrive as an (n, B, h) view of a (B, n·h) product
    experts = torch.randn(n, batch, h) if layout == "contiguous" else torch.randn(batch, n, h).transpose(0, 1)
    grad = torch.randn(batch, h)
    results = []
    for fn in (lambda w, e: torch.einsum("bn,nbh->bh", w, e), _Mix.apply):
        w, e = weights.clone().requires_grad_(True), experts.clone().requires_grad_(True)
        out = fn(w, e)
        out.backward(grad)
        results.append((out, w.grad, e.grad))
    for ref, new in zip(*results, strict=True):
        assert torch.equal(ref, new)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mix(weights, experts.bfloat16()).dtype == torch.bfloat16  # the plain einsum under autocast


@pytest.mark.parametrize("broadcast", [False, True])
def test_mix_groups_matches_separate_mixes_and_their_gradients(broadcast):
    """PLE's fused level mix: every branch's output and the gradients of the experts and of every gate's weights
    equal autograd through one einsum mix per branch (fp32 rounding: the sums run in another order)."""
    from mtlrec.layers.gates import mix, mix_groups

    torch.manual_seed(0)
    batch, h = 64, 24
    experts = torch.randn(batch, 4, h).transpose(0, 1)  # (n, B, h) view of a (B, n·h) product, as at level 1
    groups = [(0, 3), (1, 2, 3), (0, 1, 2, 3)]
    weights = [torch.softmax(torch.randn(1 if broadcast else batch, len(g)), -1) for g in groups]
    grad = torch.randn(len(groups), batch, h)
    results = []
    for fused in (False, True):
        e = experts.clone().requires_grad_(True)
        ws = [w.clone().requires_grad_(True) for w in weights]
        if fused:
            out = mix_groups(ws, e, groups)
        else:
            out = torch.stack([mix(w.expand(batch, -1), e[list(g)]) for w, g in zip(ws, groups, strict=True)])
        out.backward(grad)
        results.append((out, e.grad, *(w.grad for w in ws)))
    for ref, new in zip(*results, strict=True):
        assert new.shape == ref.shape
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mix_groups(weights, experts.bfloat16(), groups)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), results[1][0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "names",
    [("raw", "sin", "cos"), ("cos", "raw", "sin"), ("sin", "cos"), ("cos", "sin"), ("raw", "sin"), ("cos", "raw")],
)
def test_stacked_mappings_backward_reuses_sin_cos_and_is_autograds_bit_for_bit(names, dtype, monkeypatch):
    """DEPHN's explicit mappings: the fused backward (reading the forward's sin/cos) gives autograd's bits."""
    from mtlrec.layers import mappings

    torch.manual_seed(0)
    a0 = (torch.randn(64, 4, 24) * 3).to(dtype)
    grad = torch.randn(64, 4, len(names), 24).to(dtype)
    calls = []
    monkeypatch.setattr(mappings._RawSinCos, "backward", _counting(mappings._RawSinCos.backward, calls))
    results = []
    for fn in (
        lambda t: torch.stack([mappings.MAPPINGS[n](t) for n in names], 2),
        lambda t: mappings.stack_mappings(t, names, 2),
    ):
        a = a0.clone().requires_grad_(True)
        out = fn(a * 1.0)  # a non-leaf, as inside the model
        out.backward(grad)
        results.append((out, a.grad))
    assert len(calls) == 1  # the fused Function ran, once
    for ref, new in zip(*results, strict=True):
        assert torch.equal(ref, new)
    with torch.no_grad():  # inference: the plain stack
        assert torch.equal(mappings.stack_mappings(a0, names, 2), results[0][0])


def _counting(fn, calls: list):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)

    return staticmethod(wrapped)


def test_stacked_mappings_outside_the_fused_set_are_the_plain_stack():
    from mtlrec.layers import mappings

    a = torch.randn(8, 2, 5, requires_grad=True)
    for names in (("raw", "square"), ("sin2", "cos2"), ("raw",)):
        out = mappings.stack_mappings(a, names, 2)
        assert out.grad_fn is not None and "RawSinCos" not in type(out.grad_fn).__name__
        torch.testing.assert_close(out, torch.stack([mappings.MAPPINGS[n](a) for n in names], 2), rtol=0, atol=0)


def test_folded_first_layers_are_the_layers_over_the_gated_concatenation():
    from mtlrec.layers.folded_gates import folded_first_layers

    torch.manual_seed(0)
    shared = torch.randn(32, 40, requires_grad=True)  # odd widths below: the aligned products' padded paths too
    privates = [torch.randn(32, 29, requires_grad=True), None]
    layers = [torch.nn.Linear(69, 24), torch.nn.Linear(40, 16, bias=False)]
    scales = [torch.rand(1, 40, requires_grad=True) for _ in layers]
    got = folded_first_layers(shared, scales, privates, layers)
    ref = [
        layers[0](torch.cat([shared * scales[0], privates[0]], 1)),
        layers[1](shared * scales[1]),
    ]
    leaves = [shared, privates[0], *scales, *(p for lin in layers for p in lin.parameters())]
    g = [torch.randn_like(r) for r in ref]
    new = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got, g, strict=True)), leaves)
    old = torch.autograd.grad(sum((a * b).sum() for a, b in zip(ref, g, strict=True)), leaves)
    for a, b in zip([*got, *new], [*ref, *old], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _dephn_step(model, batch, precision="fp32"):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(batch)
    model.task_losses(out, batch).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {t: v.detach().float() for t, v in out.logits.items()}, grads


@pytest.mark.parametrize("tower_hidden", [[16], {"income": [8], "marital": [12, 4]}])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dephn_folded_gates_match_the_built_tower_inputs(tiny_bundle, tower_hidden, precision, monkeypatch):
    """DEPHN's towers with the value gates folded into their first layers: logits and every gradient (the
    virtual-gradient-scaled gate gradients included) those of the built gated tower inputs, to float rounding; the
    folded path ran and built no tower input."""
    import copy

    from mtlrec.data.batches import BatchIterator
    from mtlrec.layers.folded_gates import folded_first_layers
    from mtlrec.models import dephn
    from mtlrec.models.registry import create_model

    torch.manual_seed(0)
    tasks = [t.name for t in tiny_bundle.schema.tasks]
    if isinstance(tower_hidden, dict):
        tower_hidden = dict(zip(tasks, tower_hidden.values(), strict=True))
    folded = create_model(
        "dephn",
        tiny_bundle,
        embedding_dim=4,
        num_dnn_experts=3,
        dnn_hidden=[16, 8],
        cross_layers=2,
        fint_layers=2,
        tower_hidden=tower_hidden,
    )
    with torch.no_grad():  # distinct gate values per (expert, mapping): a misplaced gate column must show
        for g in folded.gates:
            g.theta.copy_(torch.randn(g.num_outputs))
    built = copy.deepcopy(folded)
    built.fold_gates = False
    batch = next(iter(BatchIterator(tiny_bundle.train, 128, shuffle=False).epoch(0)))
    calls = []
    monkeypatch.setattr(dephn, "folded_first_layers", lambda *a: calls.append(1) or folded_first_layers(*a))
    monkeypatch.setattr(type(folded), "backbone", lambda *a: pytest.fail("the folded path built tower inputs"))
    new = _dephn_step(folded, batch, precision)
    monkeypatch.undo()
    ref = _dephn_step(built, batch, precision)
    assert calls == [1]
    assert new[1].keys() == ref[1].keys() and any("gates" in n for n in new[1])
    if precision == "fp32":
        for t in ref[0]:
            torch.testing.assert_close(new[0][t], ref[0][t], rtol=1e-4, atol=1e-5)
        for n in ref[1]:
            torch.testing.assert_close(new[1][n], ref[1][n], rtol=1e-4, atol=1e-5, msg=n)
        return
    # bf16: the folded path is no further from the fp32 result than the built one is (both round differently)
    exact = _dephn_step(built, batch, "fp32")
    for t in ref[0]:
        assert _rel(new[0][t], exact[0][t]) < 2 * _rel(ref[0][t], exact[0][t]) + 1e-2, t
    for n in ref[1]:
        assert _rel(new[1][n], exact[1][n]) < 2 * _rel(ref[1][n], exact[1][n]) + 2e-2, n


def test_dephn_builds_its_tower_inputs_where_something_reads_them(tiny_bundle, monkeypatch):
    """No folding for a linear head, input-dependent gates, a plug-in acting on the tower inputs (DML) or a traced
    graph: the tower inputs are built and the logits are those of ``fold_gates=False`` bit for bit."""
    import copy

    from mtlrec.data.batches import BatchIterator
    from mtlrec.models.registry import create_model

    small = dict(embedding_dim=4, num_dnn_experts=2, dnn_hidden=[8], cross_layers=1, fint_layers=1)
    batch = next(iter(BatchIterator(tiny_bundle.train, 64, shuffle=False).epoch(0)))
    cases = [
        create_model("dephn", tiny_bundle, **small),
        create_model("dephn", tiny_bundle, gate="mg", tower_hidden=[8], **small),
        create_model("dephn", tiny_bundle, tower_hidden=[8], dml={"variant": "dml"}, **small),
    ]
    assert cases[2].tower_inputs_are_read()
    for model in cases:
        assert not model._folds_gates()
        plain = copy.deepcopy(model)
        plain.fold_gates = False
        for t, v in model(batch).logits.items():
            assert torch.equal(v, plain(batch).logits[t])
    graph = create_model("dephn", tiny_bundle, tower_hidden=[8], **small)
    assert graph._folds_gates()
    monkeypatch.setattr("mtlrec.layers.aligned.capturing_graph", lambda: True)  # tracing, export, compile
    assert not graph._folds_gates()
