"""Per-task metrics, the MTL gain and paired significance over seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

HIGHER_IS_BETTER = {"auc": True, "logloss": False, "mse": False, "rmse": False, "mae": False}


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


def compute(name: str, y: np.ndarray, p: np.ndarray) -> float:
    try:
        fn = METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; available: {sorted(METRICS)}") from None
    return fn(np.asarray(y, np.float64), np.asarray(p, np.float64))


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
