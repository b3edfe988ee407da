"""The base confidence of Criteo-R / Criteo-UR (DEPHN, Kong et al., IJCNN'23, §IV-A; MODELS.md A.1.1 step 1).

A simple DNN (the registered ``dnn``: [A] 400-400-400, embedding 16, one epoch, Adam 1e-3) is trained on the click
label of a Criteo-format file (train split, early stopping on the validation AUC) and applied to every row; its raw
pre-sigmoid logit is the base confidence ``c`` from which :mod:`mtlrec.data.datasets.criteo` builds the two tasks.

The data set never trains: this recipe writes the logits (``c.npy``, float64, one per row of the file, in file
order) and a record beside it (``c.json``: the source, rows, split and the fit), and the ``criteo_ru`` data set
reads them with ``path=FILE, confidence=c.npy``::

    python -m mtlrec.recipes.criteo_ru train.txt --out c.npy [--max-rows N] [--split-seed S] [--epochs 1]

:func:`base_confidence` (same name and arguments as the data module's before the split, plus ``min_count``,
``hash_buckets`` and ``dnn``) fits and returns the :class:`~mtlrec.data.datasets.criteo.BaseConfidence` in one
call, as ``benchmarks/vg_study.py`` uses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtlrec.data.bundle import encode_tables
from mtlrec.data.datasets import criteo as C
from mtlrec.data.splits import random_split
from mtlrec.schema import TaskSpec

#: [A] the DNN of A.1.1 step 1 (MODELS.md: 400-400-400, emb 16, 1 epoch, Adam 1e-3); early stopping on validation
DNN_DEFAULTS: dict[str, Any] = {
    "hidden": (400, 400, 400),
    "embedding_dim": 16,
    "epochs": 1,
    "batch_size": 1024,
    "lr": 1e-3,
    "seed": 0,
    "patience": 1,
}


def dnn_confidence(
    table: pa.Table,
    parts: list[np.ndarray],
    *,
    min_count: int = 1,
    hash_buckets: int | None = None,
    **dnn: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A.1.1 step 1: train the registered ``dnn`` on the click ``label`` (train split, early stopping on the
    validation AUC) and return its raw logit for every row of ``table`` plus a record of the fit."""
    from mtlrec.experiment import seed_everything
    from mtlrec.models.registry import create_model
    from mtlrec.train.trainer import TrainConfig, Trainer, evaluate, predict

    unknown = set(dnn) - set(DNN_DEFAULTS) - {"threads"}
    if unknown:
        raise TypeError(f"dnn_confidence does not take {sorted(unknown)}; it takes {sorted(DNN_DEFAULTS)}")
    cfg = {**DNN_DEFAULTS, **dnn}
    schema = C.criteo_schema([TaskSpec("click", label="label")], min_count=min_count, hash_buckets=hash_buckets)
    bundle = encode_tables("criteo_click", schema, C._split_tables(table, parts), {})
    seed_everything(cfg["seed"])
    model = create_model(
        "dnn", bundle, dnn_hidden=tuple(cfg["hidden"]), embedding_dim=cfg["embedding_dim"], tower_hidden=()
    )
    train = TrainConfig(
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        seed=cfg["seed"],
        monitor="click.auc",
        patience=cfg["patience"],
        progress=False,
        threads=cfg.get("threads"),
    )
    trainer = Trainer(model, train)
    fit = trainer.fit(bundle.train, bundle.valid)
    trainer.load_best()
    raw = np.zeros(table.num_rows)
    for name, rows in zip(("train", "valid", "test"), parts, strict=True):
        raw[rows] = predict(model, bundle.splits[name], logits=True)["click"]
    info = {
        "model": "dnn",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "best_epoch": fit.best_epoch,
        "valid_click": {k: v for k, v in evaluate(model, bundle.valid)["click"].items()},
    }
    return raw, info


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
    min_count: int = 1,
    hash_buckets: int | None = None,
    dnn: dict[str, Any] | None = None,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int | None = None,
) -> C.BaseConfidence:
    """A.1.1 steps 1-2 and 5 in one call. Without ``path``: the generator's known ``c`` (the data module's
    :func:`~mtlrec.data.datasets.criteo.base_confidence`); with ``path``: the Criteo-format file (``max_rows``
    first rows), ``c`` from :func:`dnn_confidence` (``dnn`` overrides :data:`DNN_DEFAULTS`) mapped by
    :func:`~mtlrec.data.datasets.criteo.calibrate_confidence`."""
    if path is None:
        return C.base_confidence(
            None, rows=rows, seed=seed, noise=noise, max_vocab=max_vocab, c_loc=c_loc, c_scale=c_scale,
            split=split, split_seed=split_seed,
        )  # fmt: skip
    split_seed = seed if split_seed is None else split_seed
    table, parts, raw, info = fit_confidence(path, max_rows, split, split_seed, min_count, hash_buckets, dnn)
    return C.dnn_base(table, raw, parts, info, C.base_meta(seed, c_loc, c_scale, split, split_seed), path)


def fit_confidence(
    path: str | Path,
    max_rows: int | None = None,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    min_count: int = 1,
    hash_buckets: int | None = None,
    dnn: dict[str, Any] | None = None,
) -> tuple[pa.Table, list[np.ndarray], np.ndarray, dict[str, Any]]:
    """Read the file, split it as the data set will and fit the DNN: ``(table, parts, raw logits, fit record)``."""
    table = C.read_criteo(path, max_rows)
    parts = random_split(table.num_rows, tuple(split), split_seed)
    raw, info = dnn_confidence(table, parts, min_count=min_count, hash_buckets=hash_buckets, **(dnn or {}))
    return table, parts, raw, info


def write_confidence(
    path: str | Path,
    out: str | Path,
    *,
    max_rows: int | None = None,
    split: tuple = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    min_count: int = 1,
    hash_buckets: int | None = None,
    dnn: dict[str, Any] | None = None,
) -> Path:
    """Fit the DNN on ``path`` and write its raw logits to ``out`` (``.npy``) and the record to ``out``'s ``.json``;
    returns the ``.npy`` path. Pass the same ``max_rows``, ``split`` and ``split_seed`` to the data set."""
    out = Path(out).with_suffix(".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    table, _, raw, info = fit_confidence(path, max_rows, split, split_seed, min_count, hash_buckets, dnn)
    record = {
        "source": str(path),
        "rows": table.num_rows,
        "max_rows": max_rows,
        "split": {"fractions": list(split), "split_seed": split_seed},
        "encoding": {"min_count": min_count, "hash_buckets": hash_buckets},
        "dnn": info,
    }
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, raw.astype(np.float64))
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlrec.recipes.criteo_ru", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a Criteo-format file (train.txt: tab-separated, no header)")
    p.add_argument("--out", required=True, help="the logits file to write (.npy; a .json record goes beside it)")
    p.add_argument("--max-rows", type=int, default=None, help="read only the first rows")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 8:1:1 split (the data set's split_seed)")
    p.add_argument("--min-count", type=int, default=1, help="rarer categorical values become OOV for the DNN")
    for k, v in DNN_DEFAULTS.items():
        if k != "hidden":
            p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v, help=f"DNN {k} (default {v})")
    p.add_argument("--hidden", default="400,400,400", help="DNN hidden sizes (default 400,400,400)")
    a = p.parse_args(argv)
    dnn = {k: getattr(a, k) for k in DNN_DEFAULTS if k != "hidden"}
    dnn["hidden"] = tuple(int(h) for h in a.hidden.split(","))
    out = write_confidence(a.path, a.out, max_rows=a.max_rows, split_seed=a.split_seed, min_count=a.min_count, dnn=dnn)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
