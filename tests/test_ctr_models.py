from __future__ import annotations

import pytest

from mtlrec.data.batches import BatchIterator
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate
from tests.test_model_contract import assert_shapes_and_gradients

SMALL = {"embedding_dim": 4}
CTR = {
    "dnn": {"dnn_hidden": [16]},
    "wide_deep": {"dnn_hidden": [16]},
    "dcn": {"dnn_hidden": [16], "num_cross_layers": 2},
    "dcnv2": {"dnn_hidden": [16], "num_cross_layers": 2, "low_rank": 4, "num_experts": 2},
    "fint": {"dnn_hidden": [16], "num_fint_layers": 2},
    "nfm": {"dnn_hidden": [16]},
    "xdeepfm": {"dnn_hidden": [16], "cin_layers": [8, 8]},
    "gdcn": {"dnn_hidden": [16], "num_cross_layers": 2},
    "masknet": {"dnn_hidden": [16], "num_blocks": 2, "block_dim": 8},
    "memonet": {"dnn_hidden": [16], "num_buckets": 512, "restore": "attentive"},
    "autoint": {"num_attention_layers": 2, "dnn_hidden": [16]},
}
VARIANTS = [
    ("gdcn", {"structure": "stacked"}),
    ("gdcn", {"structure": "cross_only"}),
    ("dcnv2", {"low_rank": None, "num_experts": 1, "structure": "stacked"}),
    ("masknet", {"mode": "serial", "dnn_hidden": None}),
    ("memonet", {"restore": "linear", "shrink": "sum", "hash_share": False}),
    ("autoint", {"dnn_hidden": [], "parallel_dnn_hidden": [8]}),
    ("nfm", {"linear": False}),
    ("fint", {"linear": True}),
]


def build(name, bundle, **extra):
    return create_model(name, bundle, **{**SMALL, **CTR[name], **extra})


def check_shapes_and_grads(model, bundle):
    assert_shapes_and_gradients(model, next(iter(BatchIterator(bundle.train, 64))))


@pytest.mark.parametrize(
    ("name", "extra"), VARIANTS, ids=[f"{n}-{'-'.join(map(str, e.values()))}" for n, e in VARIANTS]
)
def test_variants_shapes_and_gradients(name, extra, tiny_bundle):
    seed_everything(0)
    check_shapes_and_grads(build(name, tiny_bundle, **extra), tiny_bundle)


@pytest.mark.parametrize("name", sorted(CTR))
def test_shared_network_option(name, tiny_bundle):
    seed_everything(0)
    model = build(name, tiny_bundle, shared=True)
    assert len(model.nets) == 1 and model.embedding.table.embedding_dim == 4
    check_shapes_and_grads(model, tiny_bundle)


@pytest.mark.parametrize("name", ["dcn", "memonet", "xdeepfm"])
def test_per_task_networks_share_nothing(name, tiny_bundle):
    seed_everything(0)
    model = build(name, tiny_bundle)
    assert len(model.nets) == 2 and model.embedding.table.embedding_dim == 8
    out = model(next(iter(BatchIterator(tiny_bundle.train, 64))))
    out.logits["click"].sum().backward()
    grad = model.embedding.table.weight.grad.to_dense()
    assert grad[:, :4].abs().sum() > 0 and grad[:, 4:].abs().sum() == 0
    assert all(p.grad is None for p in model.nets[1].parameters())
    if model.wide is not None:
        assert model.wide.table.weight.grad.to_dense()[:, 1].abs().sum() == 0


def test_dense_numeric_mode(tiny_bundle):
    seed_everything(0)
    for name in ("fint", "memonet", "masknet", "dcn"):
        model = build(name, tiny_bundle, numeric_mode="dense")
        check_shapes_and_grads(model, tiny_bundle)


def test_shared_parameters_exclude_tables(tiny_bundle):
    model = build("memonet", tiny_bundle)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) not in shared for net in model.nets for p in net.module.codebook.parameters())
    model = build("wide_deep", tiny_bundle)
    assert all(id(p) not in {id(q) for q in model.shared_parameters()} for p in model.wide.parameters())


@pytest.mark.parametrize("name", sorted(CTR))
def test_learns_above_chance(name, tiny_bundle):
    seed_everything(0)
    model = build(name, tiny_bundle)
    Trainer(model, TrainConfig(epochs=4, batch_size=128, lr=5e-3, progress=False)).fit(
        tiny_bundle.train, tiny_bundle.valid
    )
    assert evaluate(model, tiny_bundle.test)["click"]["auc"] > 0.75


@pytest.mark.parametrize("name", ["fint", "nfm", "xdeepfm", "autoint", "masknet", "memonet"])
def test_field_models_reject_layouts_without_fields(name):
    from mtlrec.data.datasets.synthetic import load_synthetic

    data = load_synthetic(n=200, dim=3)
    with pytest.raises(ValueError, match="embedded fields"):
        create_model(name, data, numeric_mode="dense", **SMALL)
    create_model("dcn", data, numeric_mode="dense", **SMALL)  # cross networks work on the raw dense block


@pytest.mark.parametrize("name", sorted(CTR))
def test_single_task(name, tiny_bundle):
    seed_everything(0)
    model = create_model(name, tiny_bundle.layout, tiny_bundle.tasks[:1], **{**SMALL, **CTR[name]})
    batch = next(iter(BatchIterator(tiny_bundle.train, 32)))
    out = model(batch)
    assert set(out.logits) == {"click"} and out.logits["click"].shape == (32,)
    assert len(model.nets) == 1 and model.embedding.table.embedding_dim == 4
