from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtlrec.data.bundle import encode_tables
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, NumericFeature, Schema, TaskSpec

SHARED_DATA = Path(os.environ.get("MTLREC_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

torch.set_num_threads(2)


def needs_shared_data(sub: str):
    path = SHARED_DATA / sub
    return pytest.mark.skipif(not path.exists(), reason=f"needs the real data set at {path} (../shared/data)")


def make_table(n: int = 2000, seed: int = 0) -> pa.Table:
    """A tiny click/purchase data set whose labels depend on the features, so models can learn it."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 50, n)
    item = rng.integers(0, 30, n)
    price = rng.lognormal(0, 1, n)
    genres = np.array(["a|b", "b", "c|a|d", "d", ""])[rng.integers(0, 5, n)]
    score = 0.8 * np.sin(user) + 0.6 * np.cos(item) - 0.3 * np.log(price) + rng.normal(0, 0.3, n)
    click = (score > 0).astype(np.int64)
    purchase = ((score > 0.6) & (click == 1)).astype(np.int64)
    rating = (score * 2 + 3).astype(np.float64)
    return pa.table(
        {
            "user": user.astype(str),
            "item": item,
            "price": price,
            "genres": genres,
            "click": click,
            "purchase": purchase,
            "rating": rating,
        }
    )


def tiny_schema(with_regression: bool = False) -> Schema:
    tasks = [TaskSpec("click"), TaskSpec("purchase", mask="click")]
    if with_regression:
        tasks.append(TaskSpec("rating", type="regression"))
    return Schema(
        features=[
            CategoricalFeature("user"),
            CategoricalFeature("item"),
            NumericFeature("price", transform="log"),
            MultiValuedFeature("genres", max_len=3),
        ],
        tasks=tasks,
    )


@pytest.fixture
def tiny_bundle():
    full = make_table(3000)
    tables = {"train": full.slice(0, 2000), "valid": full.slice(2000, 500), "test": full.slice(2500, 500)}
    return encode_tables("tiny", tiny_schema(), tables, {"seed": 0})


@pytest.fixture
def tiny_bundle_reg():
    full = make_table(3000)
    tables = {"train": full.slice(0, 2000), "valid": full.slice(2000, 500), "test": full.slice(2500, 500)}
    return encode_tables("tiny", tiny_schema(with_regression=True), tables, {"seed": 0})
