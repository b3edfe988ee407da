"""Encoded splits cached on disk as ``.npy`` columns, memory-mapped on load, with a JSON manifest.

A second run with the same cache key skips reading and preprocessing. Files are written to a temporary folder and
renamed into place, so an interrupted write never leaves a half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.data.layout import FeatureLayout
from mtlrec.data.preprocess import EncodedData

MANIFEST = "manifest.json"


def cache_key(*parts: Any) -> str:
    """A short stable hash of everything that determines the encoded arrays (paths, sizes, mtimes, schema...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_splits(root: Path, splits: dict[str, EncodedData], meta: dict[str, Any]) -> None:
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        for name, data in splits.items():
            d = tmp / name
            d.mkdir()
            np.save(d / "cat.npy", data.cat)
            np.save(d / "num.npy", data.num)
            np.save(d / "labels.npy", data.labels)
            np.save(d / "masks.npy", data.masks)
            for k, v in data.multi.items():
                np.save(d / f"multi__{k}.npy", v)
        first = next(iter(splits.values()))
        manifest = {
            "splits": list(splits),
            "layout": first.layout.to_dict(),
            "task_names": first.task_names,
            "multi": list(first.multi),
            **meta,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_splits(root: Path, mmap: bool = True) -> tuple[dict[str, EncodedData], dict[str, Any]]:
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    layout = FeatureLayout.from_dict(manifest["layout"])
    mode = "r" if mmap else None
    splits = {}
    for name in manifest["splits"]:
        d = root / name
        splits[name] = EncodedData(
            cat=np.load(d / "cat.npy", mmap_mode=mode),
            num=np.load(d / "num.npy", mmap_mode=mode),
            multi={k: np.load(d / f"multi__{k}.npy", mmap_mode=mode) for k in manifest["multi"]},
            labels=np.load(d / "labels.npy", mmap_mode=mode),
            masks=np.load(d / "masks.npy", mmap_mode=mode),
            layout=layout,
            task_names=manifest["task_names"],
        )
    return splits, manifest


def has_cache(root: Path) -> bool:
    return (Path(root) / MANIFEST).exists()
