"""Criteo-R / Criteo-UR: DEPHN's two-task data sets made from a base confidence (Kong et al., IJCNN'23, §IV-A;
MODELS.md A.1.1 and Part G row 7), a reader of the Criteo display-ads format, and a Criteo-shaped generator.

Criteo format (https://www.kaggle.com/c/criteo-display-ad-challenge, ``train.txt``; 45,840,617 rows): the click
label, 13 integer columns ``I1..I13`` and 26 hashed categorical columns ``C1..C26``, tab-separated, no header;
an empty field is missing. The 200-row sample in ``../shared/data/samples/criteo_sample.txt`` is comma-separated
with a header; :func:`read_criteo` reads both.

Recipe (A.1.1):

1. Base confidence ``c``: the pre-sigmoid logit of a simple DNN trained on the click label. Training is not done
   here (``data/`` never trains a model): the recipe :mod:`mtlrec.recipes.criteo_ru` fits the registered ``dnn``
   (early-stopped on the validation split, then applied to every row: the [A] "full-data fit") and writes the raw
   logits to a confidence file (``.npy`` plus a ``.json`` record of the fit and the split), which
   :func:`base_confidence` reads (``confidence=``). For the synthetic variant (:func:`criteo_like_synthetic`) ``c``
   is known by construction.
2. ``c`` is standardised (train-split moments) and mapped to ``c_loc + c_scale·z`` (default ``N(−1.1, 1)``: the
   [A] logit distribution under which the paper's correlations 0.9877 / 0.5288 are reproduced; a standardised
   ``N(0, 1)`` gives 0.99 / 0.91 instead). ``c_loc=None`` keeps the raw logit.
3. Related latent (G.7 reading, sign multiplies both terms): ``y_r = sign(c)(2 ln(1+|c|) + 0.1 e^{|c|}) + ε``,
   ``ε ~ N(0, noise_std²)``; unrelated latent: ``y_ur = sign(c)(2 sin|c| + 0.1 cos|c|)`` (no noise in the paper;
   ``ur_noise_std`` adds some).
4. Labels ("indicative function", eq. 7): ``task1 = 1[c > 0]`` and ``task2 = 1[y > 0]`` (``labeling="threshold"``).
   With that reading task 2 nearly equals task 1 (UR differs only where ``|c| > 3.09``), so the label agreement is
   always measured and reported; ``labeling="bernoulli"`` draws ``Bernoulli(σ(c))`` and ``Bernoulli(σ(y))``.
5. Random 8:1:1 split with a recorded ``split_seed``.

A label set of chosen relatedness (``relation="mixed"``, not in the paper; issue 15's VG study): task 2 is the
related label with probability ``relatedness`` (per row) and an independent label otherwise, so the label Pearson
runs from about 0 (``relatedness=0``) to that of Criteo-R (``1``); the measured value is in ``meta["labels"]``.
The independent label (``independent=``): ``inputs`` (default, generator only) is ``1[c' > 0]`` (or
``Bernoulli(σ(c'))``) for a second base confidence ``c'`` of the same fields with its own random weights,
decorrelated from ``c`` and with its distribution, so task 2 stays learnable from the inputs but wants other
features; ``noise`` is a ``Bernoulli`` draw at the related label's positive rate (no input predicts it).

Everything is vectorised numpy/pyarrow (no per-row Python) and needs no network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import ndtri

from mtlrec.data.bundle import DataBundle, encode_tables
from mtlrec.data.datasets import register_dataset
from mtlrec.data.readers import read_table
from mtlrec.data.splits import random_split
from mtlrec.data.stream import load_stream
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, SchemaError, TaskSpec

NUM_INT, NUM_CAT = 13, 26
INT_COLUMNS = [f"I{i}" for i in range(1, NUM_INT + 1)]
CAT_COLUMNS = [f"C{i}" for i in range(1, NUM_CAT + 1)]
COLUMNS = ["label", *INT_COLUMNS, *CAT_COLUMNS]
RELATIONS = ("related", "unrelated")  # the paper's two data sets
ALL_RELATIONS = (*RELATIONS, "mixed")
INDEPENDENT = ("inputs", "noise")
LABELINGS = ("threshold", "bernoulli")


# ---- the transforms of A.1.1 -----------------------------------------------------------------------------------
def related_latent(c: np.ndarray, noise_std: float = 0.1, rng: np.random.Generator | None = None) -> np.ndarray:
    """``y_r = sign(c)·(2 ln(1+|c|) + 0.1 e^{|c|}) + ε`` (A.1.1 step 2, the G.7 grouping)."""
    a = np.abs(c)
    y = np.sign(c) * (2.0 * np.log1p(a) + 0.1 * np.exp(a))
    return y + _noise(y.shape, noise_std, rng)


def unrelated_latent(c: np.ndarray, noise_std: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """``y_ur = sign(c)·(2 sin|c| + 0.1 cos|c|)`` (A.1.1 step 3; the paper writes no noise term)."""
    a = np.abs(c)
    y = np.sign(c) * (2.0 * np.sin(a) + 0.1 * np.cos(a))
    return y + _noise(y.shape, noise_std, rng)


def _noise(shape: tuple[int, ...], std: float, rng: np.random.Generator | None) -> np.ndarray:
    if std <= 0:
        return np.zeros(shape)
    return (rng or np.random.default_rng(0)).normal(0.0, std, shape)


def two_task_labels(
    c: np.ndarray,
    relation: str = "related",
    *,
    noise_std: float = 0.1,
    ur_noise_std: float = 0.0,
    labeling: str = "threshold",
    seed: int = 0,
    relatedness: float = 1.0,
    c_alt: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The latent ``y`` of task 2 and the 0/1 labels of both tasks from the base confidence ``c`` (A.1.1 steps 3-4).

    Returns ``{"y": y, "task1": l1, "task2": l2}`` (labels int8). ``labeling``: ``threshold`` (``1[c>0]``,
    ``1[y>0]``) or ``bernoulli`` (``Bernoulli(σ(c))``, ``Bernoulli(σ(y))``). ``relation="mixed"``: task 2 is the
    related label (``y`` the related latent) with probability ``relatedness``, else the independent label: from
    ``c_alt`` (thresholded or drawn like the others) when given, else ``Bernoulli`` at the related label's rate."""
    if relation not in ALL_RELATIONS:
        raise ValueError(f"relation must be one of {ALL_RELATIONS}, got {relation!r}")
    if labeling not in LABELINGS:
        raise ValueError(f"labeling must be one of {LABELINGS}, got {labeling!r}")
    if relation == "mixed" and not 0.0 <= relatedness <= 1.0:
        raise ValueError(f"relatedness must be in [0, 1], got {relatedness}")
    rng = np.random.default_rng(seed)
    c = np.asarray(c, dtype=np.float64)
    y = unrelated_latent(c, ur_noise_std, rng) if relation == "unrelated" else related_latent(c, noise_std, rng)
    if labeling == "threshold":
        l1, l2 = c > 0, y > 0
    else:
        l1 = rng.random(c.shape) < _sigmoid(c)
        l2 = rng.random(c.shape) < _sigmoid(y)
    if relation == "mixed":  # drawn after the related labels, which are then those of relation="related"
        if c_alt is None:
            other = rng.random(c.shape) < np.mean(l2)
        else:
            c_alt = np.asarray(c_alt, dtype=np.float64)
            other = c_alt > 0 if labeling == "threshold" else rng.random(c.shape) < _sigmoid(c_alt)
        l2 = np.where(rng.random(c.shape) < relatedness, l2, other)
    return {"y": y, "task1": l1.astype(np.int8), "task2": l2.astype(np.int8)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def label_report(c: np.ndarray, y: np.ndarray, task1: np.ndarray, task2: np.ndarray) -> dict[str, float]:
    """What A.1.1 step 4 asks to log: Pearson(c, y) of the latents (the paper's "correlation coefficient"),
    the label agreement rate, the Pearson correlation of the two label vectors and the positive rates."""
    return {
        "pearson_c_y": _pearson(c, y),
        "label_agreement": float(np.mean(task1 == task2)),
        "label_pearson": _pearson(task1, task2),
        "positive_rate_task1": float(np.mean(task1)),
        "positive_rate_task2": float(np.mean(task2)),
        "c_mean": float(np.mean(c)),
        "c_std": float(np.std(c)),
    }


def calibrate_confidence(
    raw: np.ndarray, train_rows: np.ndarray, c_loc: float | None = -1.1, c_scale: float = 1.0
) -> np.ndarray:
    """``c_loc + c_scale·(raw − mean)/std`` with the moments of the training rows; ``c_loc=None`` keeps ``raw``."""
    raw = np.asarray(raw, np.float64)
    if c_loc is None:
        return raw
    ref = raw[train_rows]
    std = ref.std()
    z = (raw - ref.mean()) / (std if std > 0 else 1.0)
    return c_loc + c_scale * z


# ---- the Criteo-shaped generator --------------------------------------------------------------------------------
def _zipf_probs(size: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return p / p.sum()


def _missing_rates(rng: np.random.Generator, k: int) -> np.ndarray:
    """Most Criteo columns are dense; about a third miss 5-45 % of their values."""
    return np.where(rng.random(k) < 0.65, 0.0, rng.uniform(0.05, 0.45, k))


def criteo_like_synthetic(
    rows: int = 200_000,
    seed: int = 0,
    *,
    noise: float = 0.0,
    max_vocab: int = 20_000,
    num_linear: int = 16,
    num_pairs: int = 10,
    c_loc: float = -1.1,
    c_scale: float = 1.0,
) -> tuple[pa.Table, np.ndarray]:
    """A Criteo-shaped table (``label, I1..I13, C1..C26``) and its KNOWN base confidence ``c`` (float64, ``(rows,)``).

    Each field ``j`` has a latent value ``u_j`` per row: for an integer column ``u ~ N(0, 1)``, observed as the count
    ``floor(exp(μ_j + s_j u))``; for a categorical column the latent ``w_j[v] ~ N(0, 1)`` of its value ``v``, drawn
    from a Zipf-skewed vocabulary of log-uniform size in ``[3, max_vocab]`` and written as an 8-hex-digit hash.
    Missing values (empty, like Criteo) contribute ``u = 0``. ``f = Σ_{j∈L} a_j u_j + Σ_{(j,k)∈P} b_jk u_j u_k``
    on a random sparse set of ``num_linear`` fields and ``num_pairs`` field pairs; ``c = c_loc + c_scale·z`` with
    ``z = √(1−noise)·Φ⁻¹(rank(f)) + √noise·N(0, 1)`` (``noise``: the share of c's variance no model can see;
    0 = c is a function of the observed fields, as a DNN logit is). ``label`` is a click ``~ Bernoulli(σ(c))``.
    """
    table, c, _ = _criteo_like(rows, seed, noise, max_vocab, num_linear, num_pairs, c_loc, c_scale)
    return table, c


def _rank_gaussian(f: np.ndarray) -> np.ndarray:
    """A monotone map of ``f`` with an exact ``N(0, 1)`` marginal (ranks through Φ⁻¹)."""
    return ndtri((np.argsort(np.argsort(f, kind="stable"), kind="stable") + 0.5) / len(f))


def _criteo_like(
    rows: int,
    seed: int,
    noise: float,
    max_vocab: int,
    num_linear: int,
    num_pairs: int,
    c_loc: float,
    c_scale: float,
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """:func:`criteo_like_synthetic` plus the latent field matrix ``(rows, 39)`` (for :func:`independent_confidence`)."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    n_fields = NUM_INT + NUM_CAT
    latent = np.zeros((rows, n_fields))
    cols: dict[str, pa.Array] = {}

    int_miss = _missing_rates(rng, NUM_INT)
    mu, s = rng.uniform(0.0, 4.0, NUM_INT), rng.uniform(0.5, 1.5, NUM_INT)
    z = rng.standard_normal((rows, NUM_INT))
    missing = rng.random((rows, NUM_INT)) < int_miss
    counts = np.floor(np.exp(mu + s * z)).astype(np.int64)
    latent[:, :NUM_INT] = np.where(missing, 0.0, z)
    for j, name in enumerate(INT_COLUMNS):
        cols[name] = pa.array(counts[:, j], type=pa.int64(), mask=missing[:, j])

    cat_miss = _missing_rates(rng, NUM_CAT)
    sizes = np.exp(rng.uniform(math.log(3), math.log(max_vocab), NUM_CAT)).astype(np.int64)
    exponents = rng.uniform(1.05, 1.6, NUM_CAT)
    for j, name in enumerate(CAT_COLUMNS):
        v = rng.choice(sizes[j], size=rows, p=_zipf_probs(int(sizes[j]), exponents[j]))
        w = rng.standard_normal(sizes[j])
        miss = rng.random(rows) < cat_miss[j]
        latent[:, NUM_INT + j] = np.where(miss, 0.0, w[v])
        words = np.char.mod("%08x", rng.choice(2**32, size=sizes[j], replace=False))
        cols[name] = pa.DictionaryArray.from_arrays(
            pa.array(v.astype(np.int32), mask=miss), pa.array(words.astype(object), pa.string())
        ).cast(pa.string())

    lin = rng.choice(n_fields, size=min(num_linear, n_fields), replace=False)
    pairs = np.array([rng.choice(n_fields, 2, replace=False) for _ in range(num_pairs)]).reshape(-1, 2)
    f = latent[:, lin] @ rng.standard_normal(len(lin))
    if len(pairs):
        f = f + (latent[:, pairs[:, 0]] * latent[:, pairs[:, 1]]) @ rng.standard_normal(len(pairs))
    # rank-Gaussian: a monotone map of f (so c stays a function of the fields) with an exact N(0, 1) marginal;
    # the heavy tails of the pairwise products would otherwise dominate e^{|c|} in y_r
    zf = _rank_gaussian(f)
    zc = math.sqrt(1.0 - noise) * zf + math.sqrt(noise) * rng.standard_normal(rows)
    c = c_loc + c_scale * zc
    click = (rng.random(rows) < _sigmoid(c)).astype(np.int64)
    table = pa.table({"label": pa.array(click), **cols})
    return table, c, latent


def independent_confidence(
    latent: np.ndarray,
    c: np.ndarray,
    seed: int,
    *,
    num_linear: int = 16,
    num_pairs: int = 10,
    c_loc: float = -1.1,
    c_scale: float = 1.0,
) -> np.ndarray:
    """A second base confidence ``c'`` of the same fields (``latent``): the generator's recipe with its own random
    fields, pairs and weights (an RNG of its own, so ``c`` is unchanged), its linear correlation with ``c``
    projected out, rank-Gaussian and mapped to ``c_loc + c_scale·z`` like ``c``."""
    rng = np.random.default_rng([seed, 7919])
    n_fields = latent.shape[1]
    lin = rng.choice(n_fields, size=min(num_linear, n_fields), replace=False)
    pairs = np.array([rng.choice(n_fields, 2, replace=False) for _ in range(num_pairs)]).reshape(-1, 2)
    f = latent[:, lin] @ rng.standard_normal(len(lin))
    if len(pairs):
        f = f + (latent[:, pairs[:, 0]] * latent[:, pairs[:, 1]]) @ rng.standard_normal(len(pairs))
    z, zc = _rank_gaussian(f), (c - c.mean()) / (c.std() or 1.0)
    return c_loc + c_scale * _rank_gaussian(z - (z @ zc) / (zc @ zc) * zc)


# ---- the Criteo file format -------------------------------------------------------------------------------------
def read_criteo(path: str | Path, max_rows: int | None = None) -> pa.Table:
    """Read a Criteo-format file (tab- or comma-separated, with or without the ``label,I1..,C1..`` header,
    optionally gzipped) into a table with columns ``label, I1..I13, C1..C26``; ``max_rows`` keeps the first rows."""
    path = Path(path)
    sep, has_header = criteo_format(path)
    table = read_table(
        path,
        separator=sep,
        column_names=None if has_header else COLUMNS,
        string_columns=CAT_COLUMNS,
    )
    return table.slice(0, max_rows) if max_rows else table


def criteo_format(path: Path) -> tuple[str, bool]:
    """(separator, whether the first line is the ``label,I1..,C1..`` header) of a Criteo-format file, checked."""
    import gzip

    if not path.exists():
        raise FileNotFoundError(
            f"criteo: {path} not found; download train.txt of the Criteo display-ads challenge "
            "(https://www.kaggle.com/c/criteo-display-ad-challenge) and pass its path"
        )
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    sep = "\t" if "\t" in first else ","
    fields = first.split(sep)
    if len(fields) != len(COLUMNS):
        raise SchemaError(
            f"criteo: {path} has {len(fields)} {'tab' if sep == chr(9) else 'comma'}-separated fields; "
            f"expected {len(COLUMNS)} (label, 13 integer and 26 categorical columns)"
        )
    has_header = fields[0].strip().lower() == "label"
    if has_header and [f.strip() for f in fields] != COLUMNS:
        raise SchemaError(f"criteo: {path} header {fields[:5]}... is not label, I1..I13, C1..C26")
    return sep, has_header


def criteo_schema(
    tasks: list[TaskSpec], *, min_count: int = 1, hash_buckets: int | None = None, numeric_transform: str = "log"
) -> Schema:
    """13 numeric (``log`` of the counts, then standardised: the usual Criteo treatment) and 26 categorical fields."""
    feats: list[Any] = [NumericFeature(c, transform=numeric_transform) for c in INT_COLUMNS]
    feats += [CategoricalFeature(c, min_count=min_count, hash_buckets=hash_buckets) for c in CAT_COLUMNS]
    return Schema(features=feats, tasks=tasks)


def _split_tables(table: pa.Table, parts: list[np.ndarray]) -> dict[str, pa.Table]:
    return {k: table.take(p) for k, p in zip(("train", "valid", "test"), parts, strict=True)}


# ---- registered data sets ---------------------------------------------------------------------------------------
@register_dataset(
    "criteo_like",
    description="Criteo-shaped synthetic clicks (13 integer + 26 Zipf-skewed categorical fields) with a known "
    "base confidence c; one task, click ~ Bernoulli(sigmoid(c))",
    source="generated",
)
def load_criteo_like(
    rows: int = 200_000,
    seed: int = 0,
    noise: float = 0.0,
    max_vocab: int = 20_000,
    c_loc: float | None = -1.1,
    c_scale: float = 1.0,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int | None = None,
) -> DataBundle:
    """The generator's table with its click label as the one task ``click`` (the parameters of
    :func:`base_confidence` without a file)."""
    base = base_confidence(
        None,
        rows=rows,
        seed=seed,
        noise=noise,
        max_vocab=max_vocab,
        c_loc=c_loc,
        c_scale=c_scale,
        split=split,
        split_seed=split_seed,
    )
    meta = {**base.meta, "click_rate": float(np.mean(base.table["label"].to_numpy()))}
    schema = criteo_schema([TaskSpec("click", label="label")])
    return encode_tables("criteo_like", schema, _split_tables(base.table, base.parts), meta)


@dataclass
class BaseConfidence:
    """The inputs of Criteo-R/UR and their base confidence: ``table`` (``label, I1..I13, C1..C26``), ``c`` per row,
    the 8:1:1 split ``parts`` (row indices of train, valid, test) and a record of how ``c`` was made."""

    table: pa.Table
    c: np.ndarray
    parts: list[np.ndarray]
    meta: dict[str, Any]
    c_alt: np.ndarray | None = None  # an independent second confidence (generator only; relation="mixed")


def base_confidence(
    path: str | Path | None = None,
    *,
    rows: int = 200_000,
    seed: int = 0,
    noise: float = 0.0,
    max_vocab: int = 20_000,
    c_loc: float | None = -1.1,
    c_scale: float = 1.0,
    max_rows: int | None = None,
    confidence: str | Path | None = None,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int | None = None,
) -> BaseConfidence:
    """A.1.1 steps 1-2 and 5. Without ``path``: :func:`criteo_like_synthetic` (``rows``, ``seed``, ``noise``,
    ``max_vocab``) with its known ``c``; with ``path``: a Criteo-format file (``max_rows`` first rows) and the raw
    DNN logits of ``confidence`` (written by :func:`mtlrec.recipes.criteo_ru.write_confidence` for the same file,
    rows and split), mapped by :func:`calibrate_confidence`."""
    split_seed = seed if split_seed is None else split_seed
    meta = base_meta(seed, c_loc, c_scale, split, split_seed)
    if path is None:
        # the generator's c is already rank-Gaussian and mapped; c_loc=None means no shift (standard scale)
        loc = 0.0 if c_loc is None else c_loc
        table, c, latent = _criteo_like(rows, seed, noise, max_vocab, 16, 10, loc, c_scale)
        parts = random_split(table.num_rows, tuple(split), split_seed)
        meta |= {"confidence": "known", "generator": "criteo_like_synthetic", "total_rows": rows, "noise": noise}
        meta["max_vocab"] = max_vocab
        return BaseConfidence(
            table, c, parts, meta, independent_confidence(latent, c, seed, c_loc=loc, c_scale=c_scale)
        )
    if confidence is None:
        raise UserError(
            f"criteo_ru: path={str(path)!r} needs confidence= (the DNN logits of A.1.1 step 1); write them with "
            f"`python -m mtlrec.recipes.criteo_ru {path} --out c.npy` and pass confidence=c.npy"
        )
    table = read_criteo(path, max_rows)
    parts = random_split(table.num_rows, tuple(split), split_seed)
    raw, info = read_confidence(confidence, table.num_rows, list(split), split_seed)
    return dnn_base(table, raw, parts, info, meta, path)


def base_meta(seed: int, c_loc: float | None, c_scale: float, split: tuple, split_seed: int) -> dict[str, Any]:
    """The record :class:`BaseConfidence` starts from (same keys and order for every source of ``c``)."""
    return {
        "seed": seed,
        "c_loc": c_loc,
        "c_scale": c_scale,
        "split": {"fractions": list(split), "split_seed": split_seed},
    }


def dnn_base(
    table: pa.Table, raw: np.ndarray, parts: list[np.ndarray], info: dict[str, Any], meta: dict[str, Any], path
) -> BaseConfidence:
    """A.1.1 step 2 on raw DNN logits: calibrated with the training rows' moments."""
    c = calibrate_confidence(raw, parts[0], meta["c_loc"], meta["c_scale"])
    meta = {**meta, "confidence": "dnn", "source": str(path), "total_rows": table.num_rows, "dnn": info}
    return BaseConfidence(table, c, parts, meta)


def read_confidence(
    path: str | Path, rows: int, split: list[float], split_seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The raw logits (``.npy``, float64, one per row) and the fit record (the ``.json`` beside it) written by the
    recipe; the record's rows and split must be the ones this data set is built with (the DNN's validation split
    is the data set's)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"criteo_ru: confidence file {path} not found; write it with mtlrec.recipes.criteo_ru")
    raw = np.load(path, allow_pickle=False)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if raw.ndim != 1 or len(raw) != rows:
        raise UserError(f"criteo_ru: {path} holds {raw.shape} logits; expected one per row of the file ({rows})")
    fit = record.get("split")
    if fit is not None and fit != {"fractions": split, "split_seed": split_seed}:
        raise UserError(
            f"criteo_ru: {path} was fitted on split {fit}; this data set uses "
            f"{{'fractions': {split}, 'split_seed': {split_seed}}} (pass the same split and split_seed)"
        )
    return raw.astype(np.float64, copy=False), record.get("dnn", {})


def build_criteo_ru(
    base: BaseConfidence,
    relation: str = "related",
    *,
    noise_std: float = 0.1,
    ur_noise_std: float = 0.0,
    labeling: str = "threshold",
    label_seed: int = 1,
    min_count: int = 1,
    hash_buckets: int | None = None,
    relatedness: float = 1.0,
    independent: str = "inputs",
) -> DataBundle:
    """A.1.1 steps 3-5 on a base confidence: tasks ``task1`` and ``task2``, encoded on the recorded split;
    ``meta["labels"]`` holds the measured correlations and label agreement (:func:`label_report`, all rows).
    ``relation="mixed"``: ``relatedness`` and ``independent`` (see the module docstring)."""
    mixed = {}
    if relation == "mixed":
        if independent not in INDEPENDENT:
            raise unknown_name("criteo_ru independent label", independent, INDEPENDENT, where="independent")
        if not isinstance(relatedness, (int, float)) or not 0.0 <= relatedness <= 1.0:
            raise UserError(f"criteo_ru relatedness: expected a probability in [0, 1], got {relatedness!r}")
        if independent == "inputs" and base.c_alt is None:
            raise UserError(
                "criteo_ru independent='inputs' needs the generator's second confidence; with a Criteo file use "
                "independent='noise'"
            )
        mixed = {"relatedness": float(relatedness), "independent": independent}
    c_alt = base.c_alt if mixed.get("independent") == "inputs" else None
    lab = two_task_labels(
        base.c, relation, noise_std=noise_std, ur_noise_std=ur_noise_std, labeling=labeling, seed=label_seed,
        relatedness=float(relatedness), c_alt=c_alt,
    )  # fmt: skip
    meta = {
        **base.meta,
        "relation": relation,
        **mixed,
        "noise_std": noise_std,
        "ur_noise_std": ur_noise_std,
        "labeling": labeling,
        "label_seed": label_seed,
        "labels": label_report(base.c, lab["y"], lab["task1"], lab["task2"]),
    }
    table = base.table.append_column("task1", pa.array(lab["task1"])).append_column("task2", pa.array(lab["task2"]))
    schema = criteo_schema([TaskSpec("task1"), TaskSpec("task2")], min_count=min_count, hash_buckets=hash_buckets)
    name = {"related": "criteo_r", "unrelated": "criteo_ur"}.get(relation, f"criteo_mix{float(relatedness):g}")
    return encode_tables(name, schema, _split_tables(table, base.parts), meta)


@register_dataset(
    "criteo_ru",
    description="DEPHN Criteo-R / Criteo-UR (A.1.1): task1 = 1[c>0], task2 from the related or unrelated "
    "transform of the base confidence c (a DNN logit on a Criteo file, or known c of the Criteo-shaped generator); "
    "relation mixed: task2 the related label with probability relatedness, else an independent label",
    source="generated (criteo_like), or a Criteo-format file as path with confidence= (the DNN logits written by "
    "python -m mtlrec.recipes.criteo_ru)",
)
def load_criteo_ru(
    relation: str = "related",
    path: str | Path | None = None,
    *,
    confidence: str | Path | None = None,
    noise_std: float = 0.1,
    ur_noise_std: float = 0.0,
    labeling: str = "threshold",
    rows: int = 200_000,
    seed: int = 0,
    noise: float = 0.0,
    max_vocab: int = 20_000,
    c_loc: float | None = -1.1,
    c_scale: float = 1.0,
    max_rows: int | None = None,
    min_count: int = 1,
    hash_buckets: int | None = None,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int | None = None,
    dnn: dict[str, Any] | None = None,
    relatedness: float = 1.0,
    independent: str = "inputs",
) -> DataBundle:
    """Criteo-R (``relation="related"``) or Criteo-UR (``"unrelated"``): :func:`base_confidence` (the generator,
    or ``path`` with the recipe's ``confidence`` file) then :func:`build_criteo_ru` (label noise drawn with seed
    ``seed + 1``; ``min_count``, ``hash_buckets`` for the encoding). ``dnn`` is refused: the DNN is trained by the
    recipe :mod:`mtlrec.recipes.criteo_ru`, never by the data set. ``relation="mixed"``: task 2 is the related
    label with probability ``relatedness``, else an ``independent`` one (``inputs``: generator only; ``noise``)."""
    if relation not in ALL_RELATIONS:
        raise unknown_name("criteo_ru relation", relation, ALL_RELATIONS)
    if dnn is not None:
        raise UserError(
            "criteo_ru: dnn= is a setting of the base-confidence recipe; run `python -m mtlrec.recipes.criteo_ru "
            "FILE --out c.npy` (its --dnn options) and pass confidence=c.npy"
        )
    base = base_confidence(
        path,
        rows=rows,
        seed=seed,
        noise=noise,
        max_vocab=max_vocab,
        c_loc=c_loc,
        c_scale=c_scale,
        max_rows=max_rows,
        confidence=confidence,
        split=split,
        split_seed=split_seed,
    )
    labels = {"noise_std": noise_std, "ur_noise_std": ur_noise_std, "labeling": labeling}
    labels |= {"relatedness": relatedness, "independent": independent}
    enc = {"min_count": min_count, "hash_buckets": hash_buckets}
    return build_criteo_ru(base, relation, **labels, label_seed=seed + 1, **enc)


# ---- the Criteo data set as the CTR papers preprocess it ---------------------------------------------------------
def bucket_counts(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """FuxiCTR's / GDCN's treatment of a Criteo integer column as a category: ``v > 2 → floor(ln(v)²)``, else
    ``v − 2``, written as a string; a missing value becomes ``"NULL"`` (its own category). Vectorised."""
    x = np.asarray(pc.fill_null(pc.cast(values, pa.float64()), np.nan).to_numpy(zero_copy_only=False), np.float64)
    missing = ~np.isfinite(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2), x - 2)
    out = pa.array(np.where(missing, 0, b).astype(np.int64)).cast(pa.string())
    return pc.if_else(pa.array(missing), pa.scalar("NULL"), out)


def fuxictr_table(table: pa.Table) -> pa.Table:
    """``label`` kept; ``I1..I13`` bucketed by :func:`bucket_counts`; ``C1..C26`` with missing as ``"NULL"``."""
    cols = {"label": table["label"]}
    for c in INT_COLUMNS:
        cols[c] = bucket_counts(table[c])
    for c in CAT_COLUMNS:
        cols[c] = pc.fill_null(table[c].cast(pa.string()), "NULL")
    return pa.table(cols)


@register_dataset(
    "criteo",
    description="Criteo display ads (Kaggle DAC train.txt), one task click; the GDCN/FuxiCTR preprocessing: "
    "integers v>2 -> floor(ln(v)^2) as categories, every field min count 10, random 8:1:1",
    source="train.txt (tab-separated, no header; .gz accepted) passed as path",
)
def load_criteo(
    path: str | Path | None = None,
    *,
    max_rows: int | None = None,
    min_count: int = 10,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    numeric: str = "bucket",
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """The Criteo CTR data set as GDCN (Wang et al., CIKM'23) and FuxiCTR's ``Criteo_x1`` preprocess it: the 13
    integer columns become categories (``numeric="bucket"``: :func:`bucket_counts`; ``"log"`` keeps them numeric,
    ``log1p`` then standardised), every categorical value seen fewer than ``min_count`` (10) times in the training
    split is out of vocabulary, missing is its own ``NULL`` category; a random 8:1:1 split with ``split_seed``."""
    if path is None:
        raise UserError("criteo: pass path= (train.txt of the Criteo display-ads challenge; see docs/datasets.md)")
    if numeric not in ("bucket", "log"):
        raise unknown_name("criteo numeric treatment", numeric, ("bucket", "log"))
    path = Path(path)
    sep, has_header = criteo_format(path)
    if numeric == "bucket":
        feats: list[Any] = [CategoricalFeature(c, min_count=min_count) for c in INT_COLUMNS + CAT_COLUMNS]
        schema = Schema(features=feats, tasks=[TaskSpec("click", label="label")])
    else:  # numeric kept; a missing categorical value is out of vocabulary
        schema = criteo_schema([TaskSpec("click", label="label")], min_count=min_count)
    read = {"separator": sep, "null_values": [""], **({} if has_header else {"column_names": COLUMNS})}
    bundle = load_stream(
        schema,
        path,
        name="criteo",
        split=list(split),
        split_seed=split_seed,
        read_options={**read, "max_rows": max_rows} if max_rows else read,
        transform=fuxictr_table if numeric == "bucket" else None,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
    bundle.meta.update({"source": str(path), "protocol": f"gdcn_fuxictr/{numeric}", "min_count": min_count})
    return bundle
