"""Per-task metrics (AUC, GAUC, logloss, regression errors, ESMM's CTCVR), the MTL gain and paired significance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

HIGHER_IS_BETTER = {
    "auc": True,
    "gauc": True,
    "logloss": False,
    "mse": False,
    "rmse": False,
    "mae": False,
    "ctcvr_auc": True,
    "ctcvr_logloss": False,
    # reported beside GAUC: how many groups had one class only (left out of the average); fewer is not "better"
    # for a model, but a monitor on it must still resolve
    "gauc_skipped_groups": False,
}
#: metrics that need the task's group ids (``TaskSpec.group``) besides labels and scores
GROUPED = {"gauc"}


def auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((y - p) ** 2))


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(mse(y, p)))


def mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y - p)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
    "logloss": logloss,
    "mse": mse,
    "rmse": rmse,
    "mae": mae,
}


def gauc_detail(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> tuple[float, int, int]:
    """Group AUC: the AUC within each group (e.g. user), averaged with weights = the group's rows.

    Returns ``(gauc, skipped_groups, used_groups)``. A group whose rows are all positive or all negative has no AUC:
    it is left out of the average and counted in ``skipped_groups`` (``nan`` when no group has both classes).
    Vectorised: one sort over ``(group, score)``; tied scores inside a group share their mean rank, so each
    group's value equals ``roc_auc_score`` on that group's rows (Mann-Whitney U with ties counted one half).
    """
    y = np.asarray(y, np.float64).ravel() > 0.5
    p = np.asarray(p, np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not (len(y) == len(p) == len(g)):
        raise ValueError(f"gauc: labels ({len(y)}), scores ({len(p)}) and groups ({len(g)}) differ in length")
    if len(y) == 0:
        return float("nan"), 0, 0
    _, gid = np.unique(g, return_inverse=True)
    order = np.lexsort((p, gid))
    gs, ps, ys = gid[order], p[order], y[order]
    n = len(gs)
    pos = np.arange(n)
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    rank = (pos - group_start + 1).astype(np.float64)  # 1-based rank inside the group
    new_block = new_group | np.r_[True, ps[1:] != ps[:-1]]
    block = np.cumsum(new_block) - 1
    first = np.flatnonzero(new_block)
    last = np.r_[first[1:], n] - 1
    midrank = ((rank[first] + rank[last]) / 2.0)[block]  # ties: the mean rank of their block
    counts = np.bincount(gs).astype(np.float64)
    n_pos = np.bincount(gs, weights=ys.astype(np.float64))
    n_neg = counts - n_pos
    rank_sum = np.bincount(gs, weights=np.where(ys, midrank, 0.0))
    ok = (n_pos > 0) & (n_neg > 0)
    skipped = int((~ok).sum())
    if not ok.any():
        return float("nan"), skipped, 0
    auc_g = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    w = counts[ok]
    return float(np.sum(auc_g * w) / np.sum(w)), skipped, int(ok.sum())


def gauc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float:
    """:func:`gauc_detail` without the counts."""
    return gauc_detail(y, p, groups)[0]


def compute(name: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    if name in GROUPED:
        if groups is None:
            raise ValueError(f"metric {name!r} needs group ids: set the task's 'group' to a categorical feature")
        return gauc(y, p, groups)
    try:
        fn = METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; available: {sorted([*METRICS, *GROUPED])}") from None
    return fn(np.asarray(y, np.float64), np.asarray(p, np.float64))


def task_metrics(names: Sequence[str], y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """``{metric: value}`` for one task's rows; GAUC adds ``gauc_skipped_groups`` (single-class groups left out)."""
    out: dict[str, float] = {}
    for m in names:
        if m in GROUPED:
            if groups is None:
                raise ValueError(f"metric {m!r} needs group ids: set the task's 'group' to a categorical feature")
            value, skipped, _ = gauc_detail(y, p, groups)
            out[m] = float(value)
            out["gauc_skipped_groups"] = float(skipped)
        else:
            out[m] = float(compute(m, y, p))
    return out


def group_ids(data, group: str | None) -> np.ndarray | None:
    """The encoded ids of the categorical feature ``group`` for every row of ``data`` (an ``EncodedData``), or
    ``None`` without a group. Rows whose id is out of vocabulary (0: unseen in training) share one group."""
    if group is None:
        return None
    names = [n for n, _ in data.layout.categorical]
    if group not in names:
        raise ValueError(f"task group {group!r} is not a categorical input feature; categorical features: {names[:20]}")
    return np.asarray(data.cat[:, names.index(group)])


def funnel_of(model) -> tuple[list[str], str] | None:
    """The conversion funnel a model scores, as ``(task names in funnel order, how pCTCVR is formed)``:
    ``product`` (ESMM: pCTR·pCVR, the CVR head being conditional on a click) or ``last`` (AITM with its calibrator
    on: the last task's head already scores the whole funnel on every impression). ``None`` for other models: a
    model declares its funnel (:class:`~mtlrec.models.capabilities.ConversionFunnel`)."""
    from mtlrec.models.capabilities import ConversionFunnel

    declared = model.ctcvr_funnel if isinstance(model, ConversionFunnel) else None
    return (list(declared[0]), str(declared[1])) if declared else None


def ctcvr_metrics(
    labels: np.ndarray, masks: np.ndarray, preds: dict[str, np.ndarray], task_names: Sequence[str], funnel
) -> dict[str, float]:
    """ESMM's CTCVR target (``click·purchase``, the product of the funnel's labels) over all exposed rows (the
    first funnel task's sample space), scored by pCTCVR: ``{"ctcvr_auc", "ctcvr_logloss"}``."""
    names, how = funnel
    idx = [list(task_names).index(t) for t in names]
    keep = np.asarray(masks)[:, idx[0]] > 0
    target = np.prod(np.asarray(labels)[:, idx], axis=1)[keep]
    if how == "product":
        score = np.prod(np.stack([preds[t] for t in names], 1), axis=1)[keep]
    elif how == "last":
        score = np.asarray(preds[names[-1]])[keep]
    else:
        raise ValueError(f"ctcvr funnel: unknown scoring {how!r}; use 'product' or 'last'")
    return {"ctcvr_auc": compute("auc", target, score), "ctcvr_logloss": compute("logloss", target, score)}


def score_tasks(model, data, preds: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Each task's metrics over its sample space (rows whose mask is 1), GAUC over the task's ``group``, and, for
    a funnel model (:func:`funnel_of`), ``ctcvr_auc``/``ctcvr_logloss`` in the last funnel task's entry."""
    labels, masks = np.asarray(data.labels), np.asarray(data.masks)
    out: dict[str, dict[str, float]] = {}
    for j, t in enumerate(model.tasks):
        keep = masks[:, j] > 0
        needs_group = any(m in GROUPED for m in t.metrics)
        g = group_ids(data, getattr(t, "group", None)) if needs_group else None
        out[t.name] = task_metrics(t.metrics, labels[keep, j], preds[t.name][keep], None if g is None else g[keep])
    funnel = funnel_of(model)
    if funnel is not None:
        out[funnel[0][-1]].update(ctcvr_metrics(labels, masks, preds, model.task_names, funnel))
    return out


def higher_is_better(name: str) -> bool:
    return HIGHER_IS_BETTER[name]


def mtl_gain(metric: str, multi_task: float, single_task: float) -> float:
    """PLE §5: ``M_MTL − M_single`` for a higher-is-better metric, ``M_single − M_MTL`` otherwise."""
    return multi_task - single_task if higher_is_better(metric) else single_task - multi_task


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired t-test of ``a − b`` over seeds (same seeds, same splits); returns mean difference and p-value."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 2:
        return {
            "mean_diff": float(np.mean(a) - np.mean(b)) if len(a) and len(b) else float("nan"),
            "p_value": float("nan"),
        }
    diff = a - b
    if np.allclose(diff, diff[0]):
        return {"mean_diff": float(diff.mean()), "p_value": 0.0 if diff[0] != 0 else 1.0}
    res = stats.ttest_rel(a, b)
    return {"mean_diff": float(diff.mean()), "p_value": float(res.pvalue)}
