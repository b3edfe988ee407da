"""MovieLens-1M in its official ``::`` format, with the two tasks of the DML paper (MODELS.md B.3).

Files (https://grouplens.org/datasets/movielens/1m/, ``ml-1m.zip``; GroupLens research licence, no redistribution;
cite Harper and Konstan 2015): ``users.dat`` (UserID::Gender::Age::Occupation::Zip-code), ``movies.dat``
(MovieID::Title::Genres, genres separated by ``|``, latin-1 text) and ``ratings.dat``
(UserID::MovieID::Rating::Timestamp). The reader takes ``ratings.dat`` or, where only part of it is present, a
(gzipped) prefix of it such as ``ratings.first487650.dat.gz``.

Parsing is vectorised: the bytes are streamed once, ``::`` is replaced by the unused control character ``\\x1f``
and pyarrow's CSV reader splits the fields (quoting off: titles contain commas and quotes). Ratings are joined to
the user and movie tables with ``pyarrow.compute.index_in`` + ``take``.

Features (B.3 [A]): user_id, gender, age, occupation, zip (``zip_digits`` keeps a prefix), movie_id, genres
(multi-hot, mean-pooled :class:`MultiValuedFeature`), optionally the release year parsed from the title
(``with_year``). Tasks: ``like`` = rating ≥ ``like_threshold`` (4; binary) and ``rating`` (the 1–5 value;
regression, MSE). Split: random 8:1:1 over ratings with ``split_seed`` (recorded in ``bundle.meta``).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from mtlrec.data.bundle import DataBundle, default_cache_dir, encode_tables
from mtlrec.data.datasets import register_dataset
from mtlrec.data.splits import random_split
from mtlrec.data.store import cache_key, has_cache, load_splits, save_splits
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, Schema, SchemaError, TaskSpec

SEP = b"\x1f"
USERS = {
    "user_id": pa.int64(),
    "gender": pa.string(),
    "age": pa.string(),
    "occupation": pa.string(),
    "zip": pa.string(),
}
MOVIES = {"movie_id": pa.int64(), "title": pa.string(), "genres": pa.string()}
RATINGS = {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
RATINGS_CANDIDATES = ("ratings.dat", "ratings.dat.gz", "ratings.first487650.dat.gz")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def dat_to_csv_bytes(path: str | Path, encoding: str = "utf-8", chunk_size: int = 1 << 24) -> bytes:
    """The file's bytes with ``::`` replaced by ``\\x1f`` in one streamed pass, re-encoded to UTF-8.

    A chunk that ends in ``:`` keeps it for the next chunk, so a ``::`` split across chunks is still found."""
    path = Path(path)
    parts: list[bytes] = []
    carry = b""
    with _open(path) as fh:
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                break
            chunk = carry + chunk
            keep = len(chunk) - len(chunk.rstrip(b":"))
            keep = keep % 2  # an even run of ':' is complete separators; an odd one leaves one behind
            chunk, carry = (chunk[:-keep], chunk[-keep:]) if keep else (chunk, b"")
            parts.append(chunk.replace(b"::", SEP))
    parts.append(carry)
    data = b"".join(parts)
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        data = data.decode(encoding).encode("utf-8")
    return data


def read_dat(path: str | Path, columns: dict[str, pa.DataType], encoding: str = "utf-8") -> pa.Table:
    """Read one ``::``-separated MovieLens file into a table with the given column names and types."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"movielens: {path} not found")
    data = dat_to_csv_bytes(path, encoding)
    try:
        return csv.read_csv(
            io.BytesIO(data),
            read_options=csv.ReadOptions(column_names=list(columns), block_size=1 << 24),
            parse_options=csv.ParseOptions(delimiter=SEP.decode(), quote_char=False, double_quote=False),
            convert_options=csv.ConvertOptions(column_types=columns, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise SchemaError(f"{path}: not in the MovieLens '::' format with columns {list(columns)}: {e}") from e


def find_ratings_file(root: Path) -> Path:
    for name in RATINGS_CANDIDATES:
        if (root / name).exists():
            return root / name
    found = sorted(root.glob("ratings*.dat*"))
    if found:
        return found[0]
    raise FileNotFoundError(
        f"movielens: no ratings file in {root} (looked for {', '.join(RATINGS_CANDIDATES)}); download ml-1m.zip "
        "from https://grouplens.org/datasets/movielens/1m/ and pass its folder as data_dir"
    )


def _lookup(keys: pa.ChunkedArray, table: pa.Table, key: str, what: str) -> pa.Table:
    idx = pc.index_in(keys, value_set=table[key].combine_chunks())
    missing = idx.null_count
    if missing:
        raise SchemaError(f"movielens: {missing} ratings refer to a {what} missing from {what}s.dat")
    return table.take(idx)


def release_year(titles: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The 4-digit year in parentheses at the end of a title (``"Toy Story (1995)"`` → ``"1995"``), else ``""``."""
    if isinstance(titles, pa.ChunkedArray):
        titles = titles.combine_chunks()
    years = pc.extract_regex(titles, r"\((?P<year>\d{4})\)\s*$").field("year")
    return pc.fill_null(years, "")


def build_table(root: Path, ratings_file: str | Path | None = None, zip_digits: int | None = None) -> pa.Table:
    """One row per rating with the user and movie columns joined in (vectorised)."""
    users = read_dat(root / "users.dat", USERS)
    movies = read_dat(root / "movies.dat", MOVIES, encoding="latin-1")
    rpath = Path(ratings_file) if ratings_file else find_ratings_file(root)
    if not rpath.is_absolute() and not rpath.exists():
        rpath = root / rpath
    ratings = read_dat(rpath, RATINGS)
    u = _lookup(ratings["user_id"], users, "user_id", "user")
    movies = movies.append_column("year", release_year(movies["title"]))
    m = _lookup(ratings["movie_id"], movies, "movie_id", "movie")
    zips = u["zip"] if zip_digits is None else pc.utf8_slice_codeunits(u["zip"], 0, zip_digits)
    cols = {
        "user_id": ratings["user_id"],
        "movie_id": ratings["movie_id"],
        "gender": u["gender"],
        "age": u["age"],
        "occupation": u["occupation"],
        "zip": zips,
        "genres": m["genres"],
        "year": m["year"],
        "timestamp": ratings["timestamp"],
        "rating": ratings["rating"],
    }
    return pa.table(cols)


def add_labels(table: pa.Table, like_threshold: float = 4.0) -> pa.Table:
    return table.append_column("like", pc.cast(pc.greater_equal(table["rating"], like_threshold), pa.int8()))


def movielens_schema(with_year: bool = False, tasks: Sequence[str] = ("like", "rating"), gauc: bool = False) -> Schema:
    """``gauc``: the ``like`` task also reports GAUC over ``user_id`` (after AUC and logloss, so selection is
    unchanged)."""
    feats: list[Any] = [
        CategoricalFeature("user_id"),
        CategoricalFeature("gender"),
        CategoricalFeature("age"),
        CategoricalFeature("occupation"),
        CategoricalFeature("zip"),
        CategoricalFeature("movie_id"),
        MultiValuedFeature("genres", separator="|", max_len=6, pooling="mean"),
    ]
    if with_year:
        feats.append(CategoricalFeature("year"))
    like_metrics = ["auc", "logloss", "gauc"] if gauc else None
    known = {
        "like": TaskSpec("like", type="binary", label="like", metrics=like_metrics, group="user_id" if gauc else None),
        "rating": TaskSpec("rating", type="regression"),
    }
    unknown = set(tasks) - set(known)
    if unknown:
        raise ValueError(f"movielens tasks are {list(known)}, got {sorted(unknown)}")
    return Schema(features=feats, tasks=[known[t] for t in tasks])


def split_and_encode(
    name: str,
    schema: Schema,
    table: pa.Table,
    split: Sequence[float],
    split_seed: int,
    meta: dict[str, Any],
) -> DataBundle:
    """Random split of ``table`` by ``split`` fractions with ``split_seed``; fit on train; encode."""
    parts = random_split(table.num_rows, tuple(split), split_seed)
    tables = {k: table.take(p) for k, p in zip(("train", "valid", "test"), parts, strict=True)}
    meta = {
        **meta,
        "split": {"split": list(split), "split_seed": split_seed},
        "rows": {k: len(p) for k, p in zip(tables, parts, strict=True)},
    }
    return encode_tables(name, schema, tables, meta)


def cached(name: str, key_parts: list[Any], cache_dir: str | Path | None, use_cache: bool, build) -> DataBundle:
    """Return the cached bundle for ``key_parts`` or ``build()`` it and cache it (memory-mapped on reload)."""
    root = Path(cache_dir or default_cache_dir()) / f"{name}-{cache_key(name, *key_parts)}"
    if use_cache and has_cache(root):
        splits, manifest = load_splits(root)
        meta = manifest.get("meta", {})
        return DataBundle(name, splits, Schema.from_dict(meta["schema"]), meta, manifest.get("preprocessor"))
    bundle = build()
    if use_cache:
        bundle.meta["schema"] = bundle.schema.to_dict()
        save_splits(root, bundle.splits, {"meta": bundle.meta, "preprocessor": bundle.preprocessor_state})
        bundle.splits, _ = load_splits(root)
    return bundle


def _fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, int(st.st_mtime)]


def default_data_dir() -> Path:
    import os

    return Path(os.environ.get("MTLREC_DATA_DIR", "../shared/data"))


@register_dataset(
    "movielens_1m",
    description="MovieLens-1M ('::' format): like (rating>=4, binary) and rating (regression), the DML paper's "
    "tasks; user/movie features with multi-hot genres; random 8:1:1 split",
    source="users.dat, movies.dat, ratings.dat (or ratings.first487650.dat.gz) in data_dir/movielens-1m",
)
def load_movielens_1m(
    data_dir: str | Path | None = None,
    ratings_file: str | None = None,
    split_seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    like_threshold: float = 4.0,
    with_year: bool = False,
    zip_digits: int | None = None,
    tasks: Sequence[str] = ("like", "rating"),
    max_ratings: int | None = None,
    sample_seed: int = 0,
    gauc: bool = False,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """``gauc``: report GAUC over users on the ``like`` task. ``max_ratings``: keep a seeded random subset of that many ratings (``sample_seed``) before splitting, for
    quick runs. Everything that determines the arrays is recorded in ``bundle.meta``."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if (root / "movielens-1m").is_dir():
        root = root / "movielens-1m"
    for f in ("users.dat", "movies.dat"):
        if not (root / f).exists():
            raise FileNotFoundError(
                f"movielens: {root / f} not found; download ml-1m.zip from "
                "https://grouplens.org/datasets/movielens/1m/ and pass the unzipped folder as data_dir"
            )
    rpath = Path(ratings_file) if ratings_file else find_ratings_file(root)
    if not rpath.exists():
        rpath = root / rpath
    schema = movielens_schema(with_year, tasks, gauc)
    params = {
        "ratings_file": str(rpath),
        "split": list(split),
        "split_seed": split_seed,
        "like_threshold": like_threshold,
        "zip_digits": zip_digits,
        "max_ratings": max_ratings,
        "sample_seed": sample_seed,
    }

    def build() -> DataBundle:
        table = add_labels(build_table(root, rpath, zip_digits), like_threshold)
        total = table.num_rows
        if max_ratings is not None and max_ratings < total:
            keep = np.sort(np.random.default_rng(sample_seed).choice(total, max_ratings, replace=False))
            table = table.take(keep)
        meta = {"source": {"dir": str(root), "ratings": str(rpath)}, "ratings_total": total, "params": params}
        return split_and_encode("movielens_1m", schema, table, split, split_seed, meta)

    files = [_fingerprint(root / "users.dat"), _fingerprint(root / "movies.dat"), _fingerprint(rpath)]
    return cached("movielens_1m", [schema.to_dict(), params, files], cache_dir, use_cache, build)
