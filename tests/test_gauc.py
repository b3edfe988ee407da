"""GAUC (vectorised, ties as AUC) against a per-group sklearn loop; CTCVR of the funnel models; the evaluate hook."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mtlrec import metrics as M
from mtlrec.schema import CategoricalFeature, Schema, SchemaError, TaskSpec


def loop_gauc(y, p, g):
    num = den = 0.0
    skipped = 0
    for k in np.unique(g):
        m = g == k
        if len(np.unique(y[m])) < 2:
            skipped += 1
            continue
        num += m.sum() * roc_auc_score(y[m], p[m])
        den += m.sum()
    return (num / den if den else float("nan")), skipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_sklearn_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    g = rng.integers(0, 150, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.round(rng.random(n) + 0.3 * y, 1)  # rounded: many tied scores inside groups
    value, skipped, used = M.gauc_detail(y, p, g)
    ref, ref_skipped = loop_gauc(y, p, g)
    assert value == pytest.approx(ref, abs=1e-12)
    assert skipped == ref_skipped and used + skipped == len(np.unique(g))


def test_gauc_edge_cases():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2])
    assert M.gauc(y, p, np.zeros(4)) == pytest.approx(1.0)
    # every group single-class: nan, all skipped
    assert np.isnan(M.gauc(y, p, np.array([0, 0, 1, 1])))
    assert M.gauc_detail(y, p, np.array([0, 0, 1, 1]))[1:] == (2, 0)
    # string group ids work too; one group all ties -> 0.5
    assert M.gauc(y, np.full(4, 0.5), np.array(["u", "u", "u", "u"])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in length"):
        M.gauc(y, p, np.zeros(3))


def test_task_metrics_reports_skipped_groups():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.4, 0.6, 0.3, 0.2])
    g = np.array([0, 0, 1, 1, 2, 2])
    out = M.task_metrics(["auc", "gauc"], y, p, g)
    assert out["gauc"] == pytest.approx(1.0) and out["gauc_skipped_groups"] == 2.0
    assert set(out) == {"auc", "gauc", "gauc_skipped_groups"}
    with pytest.raises(ValueError, match="group"):
        M.task_metrics(["gauc"], y, p, None)


def test_schema_group_checks():
    with pytest.raises(SchemaError, match="needs 'group'"):
        TaskSpec("click", metrics=["gauc"])
    with pytest.raises(SchemaError, match="not a categorical feature"):
        Schema([CategoricalFeature("item")], [TaskSpec("click", metrics=["auc", "gauc"], group="user")])
    s = Schema([CategoricalFeature("user")], [TaskSpec("click", metrics=["auc", "gauc"], group="user")])
    assert Schema.from_dict(s.to_dict()).tasks[0].group == "user"


def test_ctcvr_metrics_product_and_last():
    rng = np.random.default_rng(0)
    n = 500
    click = (rng.random(n) < 0.4).astype(float)
    buy = click * (rng.random(n) < 0.3)
    labels = np.stack([click, buy], 1)
    masks = np.stack([np.ones(n), click], 1)  # CVR's sample space: clicked rows
    preds = {"ctr": rng.random(n), "cvr": rng.random(n)}
    out = M.ctcvr_metrics(labels, masks, preds, ["ctr", "cvr"], (["ctr", "cvr"], "product"))
    assert out["ctcvr_auc"] == pytest.approx(roc_auc_score(click * buy, preds["ctr"] * preds["cvr"]))
    last = M.ctcvr_metrics(labels, masks, preds, ["ctr", "cvr"], (["ctr", "cvr"], "last"))
    assert last["ctcvr_auc"] == pytest.approx(roc_auc_score(click * buy, preds["cvr"]))
    assert M.higher_is_better("ctcvr_auc") and not M.higher_is_better("ctcvr_logloss")


def _funnel_bundle(n=600):
    import pyarrow as pa

    from mtlrec.data.bundle import encode_tables

    rng = np.random.default_rng(1)
    user = rng.integers(0, 20, n)
    click = (rng.random(n) < 0.5).astype(np.int64)
    buy = click * (rng.random(n) < 0.4).astype(np.int64)
    table = pa.table({"user": user.astype(str), "item": rng.integers(0, 30, n).astype(str), "click": click, "buy": buy})
    schema = Schema(
        [CategoricalFeature("user"), CategoricalFeature("item")],
        [
            TaskSpec("ctr", label="click", metrics=["auc", "gauc"], group="user"),
            TaskSpec("cvr", label="buy", mask="click"),
        ],
    )
    parts = {"train": table.slice(0, 400), "valid": table.slice(400, 200)}
    return encode_tables("funnel", schema, parts, {})


@pytest.mark.parametrize(
    "model_name, params, funnel",
    [("esmm", {}, "product"), ("aitm", {}, "last"), ("mmoe", {}, None), ("aitm", {"calibrator_weight": 0.0}, None)],
)
def test_evaluate_reports_gauc_and_ctcvr(model_name, params, funnel):
    """AITM without its calibrator does not model a funnel (e.g. census income -> marital): no CTCVR there."""
    from mtlrec.models.registry import create_model
    from mtlrec.train.trainer import evaluate, predict

    bundle = _funnel_bundle()
    model = create_model(model_name, bundle, embedding_dim=4, **params)
    scores = evaluate(model, bundle.valid)
    v = bundle.valid
    preds = predict(model, v)
    ref, skipped = loop_gauc(v.labels[:, 0], preds["ctr"], v.cat[:, 0])
    assert scores["ctr"]["gauc"] == pytest.approx(ref) and scores["ctr"]["gauc_skipped_groups"] == skipped
    if funnel is None:
        assert "ctcvr_auc" not in scores["cvr"]
        return
    target = v.labels[:, 0] * v.labels[:, 1]
    score = preds["ctr"] * preds["cvr"] if funnel == "product" else preds["cvr"]
    assert scores["cvr"]["ctcvr_auc"] == pytest.approx(roc_auc_score(target, score))
