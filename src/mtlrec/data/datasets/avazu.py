"""Avazu click-through data (Kaggle "Click-Through Rate Prediction", 2014), one task: click.

Download: https://www.kaggle.com/c/avazu-ctr-prediction (``train.gz``, 40,428,967 rows over 10 days; Kaggle
competition rules: research use, no redistribution). Raw format: comma-separated with a header, ``id, click,
hour, C1, banner_pos, site_id, site_domain, site_category, app_id, app_domain, app_category, device_id,
device_ip, device_model, device_type, device_conn_type, C14..C21``; ``hour`` is ``YYMMDDHH`` (UTC).

Protocol (FuxiCTR ``Avazu_x4``, followed by GDCN, Wang et al. CIKM'23): ``id`` dropped; ``hour`` replaced by
``hour_of_day`` (HH) and ``weekday`` (0 = Monday, from the date ``20YY-MM-DD``) with ``hour_features="derived"``
(``"drop"`` omits the hour as GDCN's own table does); every field categorical, values seen fewer than
``min_count`` (GDCN: 5; FuxiCTR's x4 config: 2) times in the training split are out of vocabulary; random 8:1:1
split with ``split_seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.bundle import DataBundle
from mtlrec.data.datasets import register_dataset
from mtlrec.data.stream import load_stream
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, Schema, TaskSpec

COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip
FIELDS = [c for c in COLUMNS if c not in ("id", "click", "hour")]
HOUR_FEATURES = ("derived", "drop")


def split_hour(hour: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """``YYMMDDHH`` → ``(hour_of_day 0-23, weekday 0-6 with Monday = 0)``, vectorised (int64 arrays)."""
    h = np.asarray(pc.cast(hour, pa.int64()).to_numpy(zero_copy_only=False), np.int64)
    yy, mm, dd, hh = h // 1_000_000, h // 10_000 % 100, h // 100 % 100, h % 100
    if ((mm < 1) | (mm > 12) | (dd < 1) | (dd > 31) | (hh > 23)).any():
        raise UserError("avazu: column 'hour' must be YYMMDDHH (e.g. 14102100)")
    # weekday per distinct day (10 in the full file; a loop over days, not rows), mapped back to the rows
    keys, inv = np.unique(yy * 10_000 + mm * 100 + dd, return_inverse=True)
    days = np.array([f"20{k // 10_000:02d}-{k // 100 % 100:02d}-{k % 100:02d}" for k in keys], dtype="datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return pa.array(hh), pa.array(weekday[inv])


def avazu_table(raw: pa.Table, hour_features: str = "derived") -> pa.Table:
    missing = [c for c in COLUMNS if c not in raw.column_names]
    if missing:
        raise UserError(f"avazu: missing column(s) {missing}; expected the Kaggle header id, click, hour, C1, ...")
    cols = {"click": raw["click"]}
    if hour_features == "derived":
        cols["hour_of_day"], cols["weekday"] = split_hour(raw["hour"])
    for c in FIELDS:
        cols[c] = raw[c]
    return pa.table(cols)


@register_dataset(
    "avazu",
    description="Avazu CTR (Kaggle train.gz), one task click; hour -> hour_of_day and weekday, min count 5, "
    "random 8:1:1 (FuxiCTR Avazu_x4 / GDCN)",
    source="train.gz (or the CSV, header id,click,hour,...) passed as path",
)
def load_avazu(
    path: str | Path | None = None,
    *,
    min_count: int = 5,
    hour_features: str = "derived",
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    if path is None:
        raise UserError("avazu: pass path= (train.gz of the Kaggle Avazu challenge; see docs/datasets.md)")
    if hour_features not in HOUR_FEATURES:
        raise unknown_name("avazu hour_features", hour_features, HOUR_FEATURES)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"avazu: {path} not found; download train.gz from https://www.kaggle.com/c/avazu-ctr-prediction"
        )

    string_columns = [c for c in COLUMNS if c not in ("click", "hour")]
    derived = ["hour_of_day", "weekday"] if hour_features == "derived" else []
    feats = [CategoricalFeature(c, min_count=min_count) for c in derived + FIELDS]
    schema = Schema(features=feats, tasks=[TaskSpec("click")])

    def protocol(raw: pa.Table) -> pa.Table:  # applied to each streamed batch
        return avazu_table(raw, hour_features)

    bundle = load_stream(
        schema,
        path,
        name=f"avazu_{hour_features}",
        split=list(split),
        split_seed=split_seed,
        read_options={"null_values": [""]},
        transform=protocol,
        cache_dir=cache_dir,
        use_cache=use_cache,
        string_columns=string_columns,
    )
    bundle.meta.update({"source": str(path), "protocol": "fuxictr_avazu_x4", "hour_features": hour_features,
                        "min_count": min_count})  # fmt: skip
    return bundle
