"""Facts recorded beside every benchmark result: the machine, the mtlrec version and commit, the time; and the
atomic JSON writes of the harness."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """``{"cpu", "cpu_flags", "threads", "cores", "torch", "python"}`` (the JSON's ``machine`` field)."""
    import torch

    from mtlrec.train.precision import cpu_flags

    return {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
    }


def source_root() -> Path:
    """The checkout holding this mtlrec (``src/mtlrec/..`` two levels up), for the git commit."""
    return Path(__file__).resolve().parents[3]


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout holding mtlrec (``-dirty`` when tracked files under ``src`` differ), or None."""
    root = root or source_root()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root, capture_output=True)
        return head + ("-dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def mtlrec_version() -> str:
    import mtlrec

    return str(getattr(mtlrec, "__version__", "unknown"))


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent, default=json_default) + "\n")
