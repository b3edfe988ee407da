"""AliExpress multi-task data set (search logs of AliExpress in four countries; MTReclib format).

Download: https://tianchi.aliyun.com/dataset/74690 ("AliExpress Dataset"; Tianchi's terms: academic research use,
cite the source). Used by the MTReclib benchmark (Zhu et al., "Learning to Expand Audience via Meta Hybrid Experts
and Critics", KDD'21; MODELS.md Part F) and AITM's PyTorch variant. Raw format, one folder per country
(``AliExpress_NL``, ``AliExpress_ES``, ``AliExpress_FR``, ``AliExpress_US``) with ``train.csv`` and ``test.csv``:
comma-separated with a header ``search_id, categorical_1..categorical_16, numerical_1..numerical_63, click,
conversion`` (categorical ids already integers, numerical values already scaled to [0, 1]).

Protocol (MTReclib): the country's train file trains, its test file tests; ``search_id`` is not a feature; the 16
categorical and 63 numerical columns are the inputs. The validation split (MTReclib selects on the test file) is
a ``valid_fraction`` (10 %) of the train file drawn with ``split_seed``, so selection never sees test. Tasks
(``tasks``): ``ctr_ctcvr`` (``click`` and ``conversion`` over all impressions: conversion implies click, so this
is CTCVR, MTReclib's setting) or ``ctr_cvr`` (conversion on clicked rows only, for ESMM-style CVR). ``country``:
one of ``NL, ES, FR, US`` or ``all`` (the four concatenated, with a ``country`` feature).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from mtlrec.data.bundle import DataBundle, encode_tables
from mtlrec.data.datasets import register_dataset
from mtlrec.data.datasets.movielens import _fingerprint, cached, default_data_dir
from mtlrec.data.readers import read_table
from mtlrec.data.splits import random_split
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, TaskSpec

COUNTRIES = ("NL", "ES", "FR", "US")
CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERICAL = [f"numerical_{i}" for i in range(1, 64)]
COLUMNS = ["search_id", *CATEGORICAL, *NUMERICAL, "click", "conversion"]
TASK_SETS = {
    "ctr_ctcvr": [TaskSpec("ctr", label="click"), TaskSpec("ctcvr", label="conversion")],
    "ctr_cvr": [TaskSpec("ctr", label="click"), TaskSpec("cvr", label="conversion", mask="click")],
}


def aliexpress_schema(tasks: str = "ctr_ctcvr", numeric_transform: str = "none", country_feature: bool = False):
    if tasks not in TASK_SETS:
        raise unknown_name("aliexpress tasks", tasks, TASK_SETS)
    feats: list = [CategoricalFeature(c) for c in CATEGORICAL]
    if country_feature:
        feats.append(CategoricalFeature("country"))
    feats += [NumericFeature(c, transform=numeric_transform) for c in NUMERICAL]
    return Schema(features=feats, tasks=[replace(t) for t in TASK_SETS[tasks]])


def read_aliexpress(path: Path, country: str | None = None) -> pa.Table:
    """One MTReclib CSV, checked against the published header; ``country`` adds a ``country`` column."""
    table = read_table(path, string_columns=CATEGORICAL)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(
            f"aliexpress: {path} lacks column(s) {missing[:5]}; expected the MTReclib header {COLUMNS[:3]}…"
        )
    if country is not None:
        table = table.append_column("country", pa.array([country] * table.num_rows, pa.string()))
    return table


def country_files(root: Path, country: str, train_file: str | None, test_file: str | None) -> tuple[Path, Path]:
    folder = root / f"AliExpress_{country}" if (root / f"AliExpress_{country}").is_dir() else root
    train, test = folder / (train_file or "train.csv"), folder / (test_file or "test.csv")
    for f in (train, test):
        if not f.exists():
            raise FileNotFoundError(
                f"aliexpress: {f} not found; download the AliExpress data set (https://tianchi.aliyun.com/"
                f"dataset/74690) and unpack AliExpress_{country}/train.csv and test.csv under data_dir"
            )
    return train, test


@register_dataset(
    "aliexpress",
    description="AliExpress (MTReclib format; one country NL/ES/FR/US or all): 16 categorical + 63 numerical "
    "inputs; tasks ctr and ctcvr (or ctr and cvr on clicks); train file = train (10% held out as valid), test file",
    source="AliExpress_<country>/train.csv + test.csv in data_dir (Tianchi dataset 74690)",
)
def load_aliexpress(
    data_dir: str | Path | None = None,
    country: str = "NL",
    tasks: str = "ctr_ctcvr",
    valid_fraction: float = 0.1,
    split_seed: int = 0,
    numeric_transform: str = "none",
    train_file: str | None = None,
    test_file: str | None = None,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """``train_file``/``test_file`` override the file names inside the country folder (or ``data_dir`` itself)."""
    root = Path(data_dir) if data_dir else default_data_dir() / "aliexpress"
    if country != "all" and country not in COUNTRIES:
        raise unknown_name("aliexpress country", country, (*COUNTRIES, "all"))
    if not 0 < valid_fraction < 1:
        raise UserError(f"aliexpress: valid_fraction must be in (0, 1), got {valid_fraction}")
    countries = list(COUNTRIES) if country == "all" else [country]
    files = {c: country_files(root, c, train_file, test_file) for c in countries}
    schema = aliexpress_schema(tasks, numeric_transform, country_feature=country == "all")

    def build() -> DataBundle:
        tag = country == "all"
        train = pa.concat_tables([read_aliexpress(tr, c if tag else None) for c, (tr, _) in files.items()])
        test = pa.concat_tables([read_aliexpress(te, c if tag else None) for c, (_, te) in files.items()])
        tr, va = random_split(train.num_rows, (1 - valid_fraction, valid_fraction), split_seed)
        tables = {"train": train.take(tr), "valid": train.take(va), "test": test}
        meta = {
            "country": country,
            "tasks": tasks,
            "files": {c: [str(a), str(b)] for c, (a, b) in files.items()},
            "split": {"valid_fraction": valid_fraction, "split_seed": split_seed},
            "rows": {k: t.num_rows for k, t in tables.items()},
        }
        return encode_tables(f"aliexpress_{country}", schema, tables, meta)

    key = [[_fingerprint(p) for pair in files.values() for p in pair], schema.to_dict(), valid_fraction, split_seed]
    return cached(f"aliexpress_{country}", key, cache_dir, use_cache, build)
