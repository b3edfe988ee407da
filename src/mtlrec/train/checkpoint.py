"""Checkpoint and run-file I/O that a crash or a hostile file cannot turn into damage.

* Every write is atomic: a temporary file in the same folder, flushed and fsynced, then renamed over the target, so a
  kill leaves either the old file or the new one (plus, at worst, a stale ``*.tmp`` that
  :func:`remove_stale_tmp` deletes at the next start).
* Checkpoints hold tensors and plain Python values only and are loaded with ``torch.load(weights_only=True)``: a
  file carrying a pickled object (code that would run on load) is refused with a :class:`~mtlrec.errors.UserError`
  naming the file, and so is a truncated or otherwise damaged file.
* :func:`save_rotating` keeps the previous checkpoint as ``<stem>.prev.pt`` so a damaged newest file still leaves
  a good one to resume from.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from mtlrec.errors import UserError


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically: readers see the old content or the new, never a torn file."""
    data = text.encode("utf-8")
    _atomic_write(path, lambda fh: fh.write(data))


def prev_path(path: str | Path) -> Path:
    """``last.pt`` → ``last.prev.pt``: where :func:`save_rotating` keeps the previous version."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_rotating(obj: Any, path: str | Path) -> None:
    """Save ``obj`` to ``path`` atomically, keeping the file it replaces as :func:`prev_path`.

    Order: the new file is written completely to a temporary name first; then the current file becomes the previous
    one (a hard link renamed over ``*.prev.pt``, so ``path`` itself never goes missing; a plain rename where the file
    system has no hard links); then the temporary file is renamed over ``path``. A kill at any point leaves ``path``
    and/or ``*.prev.pt`` complete; :func:`load_with_fallback` reads the newest good one.
    """
    path = Path(path)
    prev = prev_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            link = path.parent / f"{prev.name}.{os.getpid()}.link.tmp"
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
                os.replace(link, prev)
            except OSError:
                link.unlink(missing_ok=True)
                os.replace(path, prev)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain values only), on the CPU.

    Raises ``FileNotFoundError`` for a missing file and :class:`UserError` (one line naming the file) for a file
    that holds anything else (a pickled object would run code: it is refused, never executed) or is damaged.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower() or "unsupported class" in str(e).lower():
            raise UserError(
                f"{path}: refused to load: the checkpoint holds Python objects other than tensors and plain values "
                "(loading it could run code); it was not written by mtlrec or has been tampered with"
            ) from None
        raise UserError(
            f"{path}: checkpoint is damaged or not one mtlrec wrote (unsupported pickle data); refused to load it"
        ) from None
    except FileNotFoundError:
        raise
    except Exception:  # truncated zip, torn pickle stream, random bytes: torch raises many kinds
        raise UserError(f"{path}: checkpoint is damaged (truncated or corrupt file); retrain or restore it") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: checkpoint is damaged (no model state in it); retrain or restore it")
    return state


def load_with_fallback(path: str | Path, warn: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:
    """Load ``path``; when it is damaged or missing, the previous version kept by :func:`save_rotating`, calling
    ``warn`` with a one-line note. Raises the error for ``path`` when neither loads."""
    path = Path(path)
    prev = prev_path(path)
    try:
        return load(path), path
    except (UserError, FileNotFoundError) as first:
        if not prev.exists():
            raise
        try:
            state = load(prev)
        except UserError:
            raise first from None
        if warn:
            reason = "missing" if isinstance(first, FileNotFoundError) else "damaged"
            warn(f"{path} is {reason}: resuming from the previous checkpoint {prev.name} instead")
        return state, prev


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files killed writes left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob("*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
