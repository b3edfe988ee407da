"""train.allocator: ``reuse`` keeps freed large blocks for the next allocation (no fresh page faults)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mtlrec.errors import UserError
from mtlrec.train.allocator import _glibc
from mtlrec.train.trainer import TrainConfig

# page faults of the second of two 256 MB allocations (the first may fault in new heap pages either way)
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from mtlrec.train.allocator import apply_allocator
    print(apply_allocator(sys.argv[1]))
    src = torch.randn(1 << 20, 64)  # 256 MiB
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        before = faults()
        out = src.index_select(0, torch.arange(src.shape[0]))
        del out
    print(faults() - before)
    """
)


def _second_allocation_faults(kind: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, kind], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(_glibc() is None, reason="the allocator settings need glibc (Linux)")
def test_reuse_serves_a_repeated_large_allocation_without_new_page_faults():
    applied, reused = _second_allocation_faults("reuse")
    _, system = _second_allocation_faults("system")
    assert applied == "True"
    pages = (256 << 20) // 4096
    assert system > pages // 2  # glibc maps a fresh block: a fault per page
    assert reused < pages // 20


def test_allocator_is_validated_and_may_change_on_resume():
    from mtlrec.train.trainer import RESUME_MAY_CHANGE

    with pytest.raises(UserError, match="train.allocator"):
        TrainConfig(allocator="jemalloc")
    assert TrainConfig().allocator == "reuse"
    assert "allocator" in RESUME_MAY_CHANGE
