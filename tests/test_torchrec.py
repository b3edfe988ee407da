"""The TorchRec embedding backend: equal to the fused table in one process, and sharded over 2 gloo processes."""

from __future__ import annotations

import itertools
import json

import numpy as np
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

    p = dict(PARAMS, **kw)
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
    torch.testing.assert_close(tr.embedding.to_fused()(batch), tr.embedding(batch))  # what export traces
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
    tr.embedding.shard(plan)
    text = tr.embedding.plan_text
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


# ---- the trainer with sharded tables over 2 gloo processes ----------------------------------------------------
# fbgemm's CPU kernel has no Adam, so the sharded tables train with its exact Adagrad and the fused-table reference
# with torch.optim.Adagrad: the same update, so the runs agree to float rounding (rtol 1e-5, as 2 vs 1 process)
PARAMS = dict(num_experts=2, expert_hidden=[8], tower_hidden=[8], embedding_dim=4)
STEPS = 4


def _cfg(**kw):
    from mtlrec.train.trainer import TrainConfig

    base = dict(batch_size=256, lr=1e-2, embedding_optimizer="adagrad", progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _losses(model, bundle, plan: str = "table_wise") -> list:
    from mtlrec.data.batches import BatchIterator
    from mtlrec.train import distributed
    from mtlrec.train.trainer import Trainer

    tr = Trainer(model, _cfg(embedding_plan=plan))
    it = distributed.ShardedBatches(BatchIterator(bundle.train, 256, shuffle=True, seed=0), distributed.current())
    batches = itertools.islice(it.epoch(0), STEPS)
    return [tr.train_step(b, it.last_global_size)[1].tolist() for b in batches]


def _fit_cfg():
    return _cfg(epochs=2, batch_size=128, patience=5)


def _fit(model, bundle, out_dir=None, max_steps=None, resume=False):
    from mtlrec.experiment import make_run_info
    from mtlrec.train.trainer import Trainer

    cfg = _fit_cfg()
    info = make_run_info(bundle, "mmoe", dict(PARAMS, embedding_backend="torchrec"), cfg, bundle.tasks)
    tr = Trainer(model, cfg, out_dir, run_info=info if out_dir else None)
    if resume:
        assert tr.resume()
    tr.fit(bundle.train, bundle.valid, max_steps=max_steps)
    return tr


def _refusal(**kw) -> str:
    from mtlrec.errors import UserError
    from mtlrec.train.trainer import Trainer

    bundle = _bundle()
    try:
        Trainer(_pair(bundle)[1], _cfg(**kw))
    except UserError as e:
        return str(e)
    return ""


def _two_process_run(out_dir) -> dict:
    """In every rank: per-step losses, a short fit (plan, history, test AUC, files), an interrupted fit resumed,
    the refusals (row-wise and Adam on CPU) and the column-wise forward check."""
    from mtlrec.train import distributed
    from mtlrec.train.trainer import evaluate

    torch.set_num_threads(1)
    bundle = _bundle()
    res = {"losses": _losses(_pair(bundle)[1], bundle)}
    res["losses_by_plan"] = {p: _losses(_pair(bundle)[1], bundle, p) for p in ("column_wise", "auto")}
    full = _fit(_pair(bundle)[1], bundle, out_dir / "full")
    res["plan"] = full.embedding_plan
    res["history"] = [h["monitor_value"] for h in full.state["history"]]
    final = {k: v.clone() for k, v in full.model_state().items()}  # the last step (load_best overwrites it)
    full.load_best()
    res["test_auc"] = evaluate(full.model, bundle.test)["click"]["auc"]
    _fit(_pair(bundle)[1], bundle, out_dir / "part", max_steps=10)  # stopped mid-epoch 2
    again = _fit(_pair(bundle)[1], bundle, out_dir / "part", resume=True)
    res["resume_diff"] = max(float((again.model_state()[k] - v).abs().max()) for k, v in final.items())
    res["row_wise"] = _refusal(embedding_plan="row_wise")
    res["adam"] = _refusal(embedding_optimizer="adam")
    res["column_wise"] = _sharded("column_wise")
    res["rank"] = distributed.rank()
    return res


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from mtlrec.train.distributed import launch

    out = tmp_path_factory.mktemp("trec")
    return launch(2, _two_process_run, {"out_dir": out}), out


def test_sharded_tables_train_like_the_fused_table(two):
    """Per-step losses and the validation/test AUC of 2 processes with sharded tables equal one process with the
    fused table (same weights, same data order, Adagrad on both)."""
    res, _ = two
    bundle = _bundle()
    fused = _pair(bundle)[0]
    one_losses = _losses(fused, bundle)
    ref = _fit(_pair(bundle)[0], bundle)
    ref.load_best()
    from mtlrec.train.trainer import evaluate

    auc = evaluate(ref.model, bundle.test)["click"]["auc"]
    history = [h["monitor_value"] for h in ref.state["history"]]
    for r in (0, 1):
        np.testing.assert_allclose(res[r]["losses"], one_losses, rtol=1e-5, atol=1e-6)
        for plan, losses in res[r]["losses_by_plan"].items():
            np.testing.assert_allclose(losses, one_losses, rtol=1e-5, atol=1e-6, err_msg=plan)
        np.testing.assert_allclose(res[r]["history"], history, atol=1e-4)
        assert abs(res[r]["test_auc"] - auc) < 1e-4


def test_the_plan_is_recorded(two):
    res, out = two
    plan = res[0]["plan"]
    assert plan == res[1]["plan"] and plan["plan"] == "table_wise" and plan["world_size"] == 2
    assert plan["optimizer"] == "exact_adagrad"
    assert set(plan["tables"]) == {"t_user", "t_item", "t_genres"}
    assert {t["sharding_type"] for t in plan["tables"].values()} == {"table_wise"}
    assert {r for t in plan["tables"].values() for r in t["ranks"]} <= {0, 1}
    assert json.loads((out / "full" / "run.json").read_text())["embedding_plan"] == plan


def test_a_two_process_checkpoint_evaluates_in_one_process_and_resumes_in_two(two):
    from mtlrec.errors import UserError
    from mtlrec.experiment import load_run
    from mtlrec.export.run import export_run
    from mtlrec.train.trainer import evaluate

    res, out = two
    model, _ = load_run(out / "full")  # best.pt, unsharded layout, weights_only loading
    assert not model.embedding.sharded
    assert abs(evaluate(model, _bundle().test)["click"]["auc"] - res[0]["test_auc"]) < 1e-6
    report = export_run(out / "full", "onnx", out / "m.onnx", data=_bundle().valid)  # parity-checked
    assert report["max_abs_diff"] < 1e-5 and (out / "m.onnx").exists()
    for r in (0, 1):
        assert res[r]["resume_diff"] < 1e-5
    with pytest.raises(UserError, match="tables sharded table_wise over 2 processes"):
        _fit(_pair(_bundle())[1], _bundle(), out / "full", resume=True)  # one process cannot take the shards


def test_row_wise_and_adam_on_cpu_are_refused_and_column_wise_shards(two):
    res, _ = two
    for r in (0, 1):
        assert "does not offer row_wise sharding on cpu" in res[r]["row_wise"]
        assert "has no Adam" in res[r]["adam"] and "embedding_optimizer=adagrad" in res[r]["adam"]
        cw = res[r]["column_wise"]
        assert cw["same"] and cw["same_logits"] and cw["tables_back"] and "column_wise" in cw["plan"]
