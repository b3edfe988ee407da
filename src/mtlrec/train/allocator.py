"""How the process's memory allocator treats large tensors: ``reuse`` (the default) or ``system``.

A CPU training step allocates and frees the same large tensors every step (activations, gradients; DTN's codebook
gathers are 100-250 MB each). glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and returns it with ``munmap`` when freed, so the next step touches new pages and pays a page fault for
every 4 KiB of each such tensor: measured on a 2-core EPYC, a 255 MB ``index_select`` took 101 ms into a new
tensor and 24 ms into a reused one; whole training steps ran 5-20% slower (MMoE, DEPHN; DTN 25%). PyTorch has no
caching allocator on the CPU, and its tuning guide suggests preloading jemalloc or tcmalloc for this reason.

``reuse`` asks glibc (``mallopt``) to serve large blocks from its heap and to keep freed memory for the next
allocation (up to 2 GiB) instead of returning it to the system; the process's resident memory then stays near its peak instead
of dropping between steps. It is process-wide, applies once, and is skipped (``reuse`` reports False) where the C
library is not glibc. ``system`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

ALLOCATORS = ("reuse", "system")

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_FREED = 2**31 - 1  # bytes of free memory at the top of the heap kept for reuse (mallopt takes an int)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has mallopt but ignores it)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


@functools.cache
def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (see the module docstring); True when
    the settings took effect (glibc), False elsewhere. Idempotent."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))


def apply_allocator(kind: str) -> bool:
    """Apply ``train.allocator``: ``reuse`` calls :func:`reuse_freed_memory`; ``system`` changes nothing (and
    cannot undo an earlier ``reuse`` in the same process). Returns whether freed memory is reused."""
    if kind == "reuse":
        return reuse_freed_memory()
    return False
