"""hyenadna.runtime.keep_freed_memory: freed tensors are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate and free a 128 MB tensor 8 times (torch.ones touches every page) and count the page
# faults of the loop. Run in a fresh interpreter: the setting is per process and permanent.
SCRIPT = """
import resource, sys, torch
from hyenadna.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    why = keep_freed_memory()
    assert why is None, why
torch.ones(1 << 25)  # warm up: first allocation of this size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    x = torch.ones(1 << 25)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_stops_refaulting_freed_tensors() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    pages = (1 << 25) * 4 // 4096  # one 128 MB tensor in 4 KiB pages
    assert default > 4 * pages  # each of the 8 allocations is a fresh mmap, faulted in again
    assert kept <= 2 * pages  # the freed block is reused: at most one more fault-in, not eight
