"""The TorchRec embedding backend: equal to the fused table in one process, and sharded over 2 gloo processes."""

from __future__ import annotations

import pytest
import torch

try:
    from mtlrec.layers.torchrec_embedding import require_torchrec

    require_torchrec()
    HAVE_TORCHREC = True
except Exception:  # UserError when the extra is missing
    HAVE_TORCHREC = False

pytestmark = pytest.mark.skipif(not HAVE_TORCHREC, reason="needs the torchrec extra (pip install 'mtlrec[torchrec]')")


def _bundle():
    from mtlrec.data.bundle import encode_tables

    from .conftest import make_table, tiny_schema

    full = make_table(1200)
    tables = {"train": full.slice(0, 800), "valid": full.slice(800, 200), "test": full.slice(1000, 200)}
    return encode_tables("tiny", tiny_schema(), tables, {"seed": 0})


def _pair(bundle, **kw):
    """A fused-table MMoE and a TorchRec-backend MMoE with the same weights."""
    from mtlrec.experiment import seed_everything
    from mtlrec.models.registry import create_model

    p = dict(num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4, **kw)
    seed_everything(0)
    fused = create_model("mmoe", bundle.layout, bundle.tasks, **p)
    tr = create_model("mmoe", bundle.layout, bundle.tasks, embedding_backend="torchrec", **p)
    dense = {k: v for k, v in fused.state_dict().items() if not k.startswith("embedding.")}
    tr.load_state_dict(dense, strict=False)
    tr.embedding.load_fused(fused.embedding)
    return fused, tr


def test_torchrec_backend_equals_fused_table_in_one_process():
    from mtlrec.data.batches import BatchIterator
    from mtlrec.train.trainer import TrainConfig, Trainer

    bundle = _bundle()
    fused, tr = _pair(bundle, sparse_embedding=False)  # unsharded TorchRec tables take dense gradients: dense Adam
    batch = next(iter(BatchIterator(bundle.train, 128)))
    torch.testing.assert_close(tr.embedding(batch), fused.embedding(batch))
    cfg = TrainConfig(batch_size=128, lr=1e-2, progress=False, device="cpu")
    a, b = Trainer(fused, cfg), Trainer(tr, cfg)
    for k, batch in enumerate(BatchIterator(bundle.train, 128, shuffle=True).epoch(0)):
        if k == 4:
            break
        la, lb = a.train_step(batch)[1], b.train_step(batch)[1]
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)


def _sharded(plan: str) -> dict:
    from mtlrec.data.batches import Batch
    from mtlrec.layers.torchrec_embedding import gather_full_state
    from mtlrec.train import distributed

    torch.set_num_threads(1)
    bundle = _bundle()
    fused, tr = _pair(bundle)
    full = {k: v.clone() for k, v in tr.embedding.ebc.state_dict().items()}
    ctx = distributed.current()  # the process group torchrun's variables describe
    text = tr.embedding.shard(plan)
    lo, hi = distributed.shard_bounds(256, ctx.world_size, ctx.rank)
    batch = Batch.from_arrays(bundle.train, slice(lo, hi))  # this rank's share of a 256-row batch
    with torch.no_grad():
        same = torch.allclose(tr.embedding(batch), fused.embedding(batch), atol=1e-6)
        same_logits = all(
            torch.allclose(x, y, atol=1e-5)
            for x, y in zip(tr(batch).logits.values(), fused(batch).logits.values(), strict=True)
        )
    gathered = gather_full_state(tr.embedding.ebc)
    tables_back = all(torch.equal(gathered[k], v) for k, v in full.items())
    return {"plan": text, "same": same, "same_logits": same_logits, "tables_back": tables_back}


@pytest.mark.parametrize("plan", ["table_wise", "column_wise"])  # TorchRec 1.8's CPU sharder has no row_wise
def test_sharded_tables_over_two_processes_equal_the_fused_table(plan):
    from mtlrec.train.distributed import launch

    res = launch(2, _sharded, {"plan": plan})
    for r in (0, 1):
        assert res[r]["same"] and res[r]["same_logits"] and res[r]["tables_back"], res[r]
        assert plan in res[r]["plan"]
