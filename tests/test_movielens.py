"""MovieLens-1M ('::' format) and Amazon-Electronics-style readers, on fixtures written here in the official formats
and on the real files when ../shared/data has them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mtlrec.data.datasets import list_datasets, load_dataset
from mtlrec.data.datasets.amazon import augment, sample_negatives
from mtlrec.data.datasets.movielens import MOVIES, dat_to_csv_bytes, read_dat, release_year
from mtlrec.schema import SchemaError
from tests.conftest import SHARED_DATA, needs_shared_data

USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n4::F::45::7::02460\n"
MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama|Musical\n"
    '3::"Great Day in Harlem, A" (1994)::Documentary\n'
    "4::Metisse (Café au Lait) (1993)::Comedy\n"
)


def write_ml(root: Path, n_ratings: int = 200, seed: int = 0) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.dat").write_text(USERS_DAT)
    (root / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    rng = np.random.default_rng(seed)
    r = np.stack(
        [rng.integers(1, 5, n_ratings), rng.integers(1, 5, n_ratings), rng.integers(1, 6, n_ratings)], 1
    ).astype(int)
    lines = "".join(f"{u}::{m}::{s}::{978300000 + i}\n" for i, (u, m, s) in enumerate(r))
    (root / "ratings.dat").write_text(lines)
    return r


@pytest.fixture
def ml_dir(tmp_path):
    ratings = write_ml(tmp_path / "ml")
    return tmp_path / "ml", ratings


def test_registered():
    names = list_datasets()
    assert "movielens_1m" in names and "amazon_electronics" in names


def test_dat_parsing_latin1_and_quotes(ml_dir):
    root, _ = ml_dir
    movies = read_dat(root / "movies.dat", MOVIES, encoding="latin-1")
    assert movies.num_rows == 4
    titles = movies["title"].to_pylist()
    assert titles[1] == "Misérables, Les (1995)" and titles[2] == '"Great Day in Harlem, A" (1994)'
    assert release_year(movies["title"]).to_pylist() == ["1995", "1995", "1994", "1993"]
    assert release_year(pa.array(["No year", "Odd (19x5)"])).to_pylist() == ["", ""]


def test_streamed_replace_across_chunk_boundaries(ml_dir):
    root, _ = ml_dir
    whole = dat_to_csv_bytes(root / "ratings.dat")
    assert b"::" not in whole and whole.count(b"\x1f") == 3 * 200
    for size in (1, 2, 3, 7):
        assert dat_to_csv_bytes(root / "ratings.dat", chunk_size=size) == whole


def test_movielens_fixture(ml_dir, tmp_path):
    root, r = ml_dir
    b = load_dataset("movielens_1m", data_dir=root, cache_dir=tmp_path / "cache", with_year=True)
    assert sum(len(s) for s in b.splits.values()) == 200
    assert {k: len(s) for k, s in b.splits.items()} == {"train": 160, "valid": 20, "test": 20}
    assert [t.name for t in b.tasks] == ["like", "rating"] and b.tasks[1].type == "regression"
    labels = np.concatenate([np.asarray(s.labels) for s in b.splits.values()])
    assert sorted(labels[:, 1].tolist()) == sorted(r[:, 2].astype(float).tolist())
    np.testing.assert_array_equal(labels[:, 0], (labels[:, 1] >= 4).astype(np.float32))
    names = [n for n, _ in b.layout.categorical]
    assert names == ["user_id", "gender", "age", "occupation", "zip", "movie_id", "year"]
    genres = np.asarray(b.train.multi["genres"])
    assert genres.shape[1] == 6 and (genres > 0).sum(1).max() == 3  # Toy Story: 3 genres
    assert b.meta["split"]["split_seed"] == 0
    # the cache gives back the same arrays
    again = load_dataset("movielens_1m", data_dir=root, cache_dir=tmp_path / "cache", with_year=True)
    np.testing.assert_array_equal(np.asarray(again.test.cat), np.asarray(b.test.cat))
    assert [t.name for t in again.tasks] == ["like", "rating"]


def test_movielens_gauc_option(ml_dir, tmp_path):
    from mtlrec.models.registry import create_model
    from mtlrec.train.trainer import evaluate

    root, _ = ml_dir
    b = load_dataset("movielens_1m", data_dir=root, cache_dir=tmp_path / "cache", gauc=True)
    like = b.tasks[0]
    assert like.group == "user_id" and like.metrics == ["auc", "logloss", "gauc"]
    scores = evaluate(create_model("mmoe", b, embedding_dim=4), b.valid)
    assert {"gauc", "gauc_skipped_groups"} <= set(scores["like"])
    # from the cache the schema (with its group) comes back too
    again = load_dataset("movielens_1m", data_dir=root, cache_dir=tmp_path / "cache", gauc=True)
    assert again.tasks[0].group == "user_id"


def test_split_seeded(ml_dir, tmp_path):
    root, _ = ml_dir

    def test_labels(seed):
        b = load_dataset("movielens_1m", data_dir=root, split_seed=seed, use_cache=False)
        return np.asarray(b.test.cat)

    np.testing.assert_array_equal(test_labels(1), test_labels(1))
    assert not np.array_equal(test_labels(1), test_labels(2))


def test_gzipped_prefix_reads_like_full(ml_dir, tmp_path):
    root, _ = ml_dir
    lines = (root / "ratings.dat").read_bytes().splitlines(keepends=True)
    gz = tmp_path / "gz"
    write_ml(gz)
    (gz / "ratings.dat").unlink()
    with gzip.open(gz / "ratings.first150.dat.gz", "wb") as fh:
        fh.write(b"".join(lines[:150]))
    b = load_dataset("movielens_1m", data_dir=gz, use_cache=False)
    assert b.meta["ratings_total"] == 150 and b.meta["source"]["ratings"].endswith(".dat.gz")
    sub = load_dataset("movielens_1m", data_dir=root, use_cache=False, max_ratings=50)
    assert sum(len(s) for s in sub.splits.values()) == 50


def test_unknown_user_is_an_error(ml_dir, tmp_path):
    root, _ = ml_dir
    with open(root / "ratings.dat", "a") as fh:
        fh.write("99::1::5::978300000\n")
    with pytest.raises(SchemaError, match="missing from users.dat"):
        load_dataset("movielens_1m", data_dir=root, use_cache=False)
    with pytest.raises(FileNotFoundError, match="grouplens"):
        load_dataset("movielens_1m", data_dir=tmp_path / "nothing", use_cache=False)


@needs_shared_data("movielens-1m")
def test_real_movielens(tmp_path):
    movies = read_dat(SHARED_DATA / "movielens-1m" / "movies.dat", MOVIES, encoding="latin-1")
    assert movies.num_rows == 3883
    assert "Misérables, Les (1995)" in movies["title"].to_pylist()
    b = load_dataset("movielens_1m", data_dir=SHARED_DATA, cache_dir=tmp_path)
    n = b.meta["ratings_total"]
    assert n in (487_650, 1_000_209)
    assert sum(len(s) for s in b.splits.values()) == n
    like = np.asarray(b.train.labels)[:, 0].mean()
    assert 0.5 < like < 0.65  # about 57.5% of ML-1M ratings are 4 or 5
    assert dict(b.layout.categorical)["gender"] == 3 and b.layout.multi_valued[0].vocab_size == 19


# ---- Amazon Electronics ------------------------------------------------------------------------------------------
def write_amazon(path: Path, n_users: int = 30, n_items: int = 60, rating: bool = False, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, rng.integers(2, 12), replace=False)
        rows += [(u, int(i), 1400000000 + int(i), int(i) % 7) for i in items]
    arr = np.array(rows)
    cols = {"user_id": arr[:, 0], "item_id": arr[:, 1], "time": arr[:, 2], "cate_id": arr[:, 3]}
    if rating:
        cols["rating"] = rng.integers(1, 6, len(arr))
    table = pa.table(cols)
    header = ",".join(cols)
    body = "\n".join(",".join(str(table[c][i].as_py()) for c in cols) for i in range(table.num_rows))
    path.write_text(header + "\n" + body + "\n")
    return table


def test_negative_sampling_properties():
    users = np.repeat(np.arange(5), [3, 5, 2, 8, 4])
    items = np.concatenate(
        [np.random.default_rng(u).choice(30, k, replace=False) for u, k in enumerate([3, 5, 2, 8, 4])]
    )
    rows, neg = sample_negatives(users, items, 30, seed=3)
    assert len(rows) == len(users)  # as many un-rated as rated per user
    rated = set(zip(users.tolist(), items.tolist(), strict=True))
    pairs = list(zip(users[rows].tolist(), neg.tolist(), strict=True))
    assert not rated & set(pairs) and len(set(pairs)) == len(pairs)
    np.testing.assert_array_equal(np.bincount(users[rows]), np.bincount(users))
    rows2, neg2 = sample_negatives(users, items, 30, seed=3)
    np.testing.assert_array_equal(neg, neg2)
    # a user who rated 10 of 12 items can only get 2 negatives
    rows3, _ = sample_negatives(np.zeros(10, int), np.arange(10), 12, seed=0, max_rounds=20)
    assert len(rows3) == 2


def test_amazon_fixture(tmp_path):
    src = write_amazon(tmp_path / "elec.csv")
    b = load_dataset("amazon_electronics", path=tmp_path / "elec.csv", cache_dir=tmp_path / "c")
    n = src.num_rows
    assert sum(len(s) for s in b.splits.values()) == 2 * n
    labels = np.concatenate([np.asarray(s.labels) for s in b.splits.values()])
    assert labels[:, 0].sum() == n and (labels[:, 1] <= labels[:, 0]).all()
    assert "repeat_category" in b.meta["positive_definition"] and b.meta["negatives_missing"] == 0
    assert [t.name for t in b.tasks] == ["rated", "positive"]


def test_amazon_augment_rows(tmp_path):
    src = write_amazon(tmp_path / "e.csv", rating=True)
    out, info = augment(src, seed=1)
    assert info["positive_definition"] == "rating >= 4.0"
    d = out.to_pydict()
    rated = {(u, i) for u, i, r in zip(d["user_id"], d["item_id"], d["rated"], strict=True) if r}
    cate = {i: c for i, c, r in zip(d["item_id"], d["cate_id"], d["rated"], strict=True) if r}
    for u, i, c, r, p in zip(d["user_id"], d["item_id"], d["cate_id"], d["rated"], d["positive"], strict=True):
        if not r:
            assert (u, i) not in rated and cate[i] == c and p == 0
    pos = np.array(d["positive"][: src.num_rows])
    np.testing.assert_array_equal(pos, (src["rating"].to_numpy() >= 4).astype(np.int8))
    same, _ = augment(src, seed=1)
    assert same.equals(out)
    pop, info = augment(src, seed=1, sampling="popularity")
    assert info["negatives"] == src.num_rows
    with pytest.raises(SchemaError, match="undefined"):
        augment(src.drop(["rating"]), seed=0, positive="error")
    with pytest.raises(SchemaError, match="missing columns"):
        augment(src.drop(["cate_id"]), seed=0)


@needs_shared_data("samples")
def test_amazon_sample_file():
    b = load_dataset(
        "amazon_electronics", path=SHARED_DATA / "samples" / "amazon_electronics_sample.csv", use_cache=False
    )
    assert b.meta["rated_rows"] == 100 and sum(len(s) for s in b.splits.values()) == 200
