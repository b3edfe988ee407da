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


FULL_HASH_BELOW = 32 << 20  # files up to 32 MiB are hashed whole
_WINDOW = 1 << 20  # larger files: 1 MiB at the start, at the end and at 14 evenly spaced offsets (16 MiB read)
_WINDOWS = 16


def content_digest(path: str | Path) -> str:
    """BLAKE2b of a file's content: the whole file below 32 MiB, else 16 windows of 1 MiB spread evenly over it
    (the first and the last included). Together with the size and the nanosecond mtime this is the cache key of
    an input file: a rewrite that keeps the size and the whole-second mtime but changes any byte is caught (whole
    hash) or, for large files, caught unless it changes only bytes between the windows *and* restores mtime_ns."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        if size <= FULL_HASH_BELOW:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        else:
            for k in range(_WINDOWS):
                fh.seek((size - _WINDOW) * k // (_WINDOWS - 1))
                h.update(fh.read(_WINDOW))
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> list[Any]:
    """What identifies an input file in a cache key: resolved path, size, mtime in ns and :func:`content_digest`."""
    p = Path(path)
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns, content_digest(p)]


def clean_stale_tmp(parent: Path, prefix: str) -> None:
    """Remove temporary folders of interrupted cache writes (``<prefix>.*`` without a manifest) under ``parent``."""
    if not parent.is_dir():
        return
    for d in parent.glob(prefix + ".*"):
        if d.is_dir() and not (d / MANIFEST).exists():
            shutil.rmtree(d, ignore_errors=True)


class ColumnFile:
    """A pre-allocated ``.npy`` file filled by row blocks with ``os.pwrite``: unlike a writable memory map, the
    written pages are never part of the writer's resident memory (they sit in the page cache, which the kernel
    writes back and evicts), so encoding a cache larger than RAM keeps the process small."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        header = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
        self.offset = header.offset
        del header  # only the header page was touched
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_WRONLY)

    def write_rows(self, at: int, rows: np.ndarray) -> None:
        buf = np.ascontiguousarray(rows, dtype=self.dtype)
        if buf.nbytes:
            os.pwrite(self.fd, memoryview(buf).cast("B"), self.offset + at * self.row_bytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class CacheWriter:
    """Writes one cache folder atomically: columns are pre-allocated ``.npy`` files (:class:`ColumnFile`) in a
    temporary folder beside ``root``, filled batch by batch, and the folder is renamed into place by
    :meth:`commit` (with its manifest written last). An exception before that removes the temporary folder, and
    the next writer for the same key removes folders that a killed process left, so no half cache is ever used."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.root.parent, self.root.name)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.root.name + ".", dir=self.root.parent))
        self.files: list[ColumnFile] = []

    def column(self, split: str, name: str, shape: tuple[int, ...], dtype: Any) -> ColumnFile:
        d = self.tmp / split
        d.mkdir(exist_ok=True)
        f = ColumnFile(d / f"{name}.npy", shape, dtype)
        self.files.append(f)
        return f

    def _close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def commit(self, manifest: dict[str, Any]) -> None:
        self._close()
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, default=str))
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self.tmp, self.root)

    def abort(self) -> None:
        try:
            for f in self.files:
                if f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1
        finally:
            self.files = []
            shutil.rmtree(self.tmp, ignore_errors=True)


def save_splits(root: Path, splits: dict[str, EncodedData], meta: dict[str, Any]) -> None:
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root.parent, root.name)
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
    """The splits of a cache folder as (read-only) memory maps; categorical ids keep their stored dtype (the
    narrowest integer type that holds them), :class:`~mtlrec.data.batches.Batch` casts them per batch."""
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
