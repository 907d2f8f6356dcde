"""Process-level CPU settings for long sequences: keep freed memory for reuse (glibc malloc).

PyTorch's CPU allocator has no cache: every activation is a fresh `malloc`, and glibc serves
requests above its mmap threshold (at most 32 MB) with a new `mmap` that `free` hands back to the
kernel. A long-sequence step allocates and frees gigabytes, so the kernel faults in and zeroes
every page again on each step: at L = 256k (D = 128) the Hyena operator's forward+backward spent
more CPU time in the kernel than in PyTorch (`benchmarks/README.md`). `keep_freed_memory()` tells
glibc to serve every request from its heap and never return freed memory to the kernel, so the
next step reuses pages that are already mapped. The price is a higher peak resident size (freed
blocks stay in the process, and the heap fragments), so it is opt-in (`cpu_keep_freed_memory`
in the train/finetune configs, `--keep-freed-memory` in the benchmarks). Measured on the 2-core,
24 GB VM (benchmarks/README.md): operator fwd+bwd at 256k tokens 5.24 s -> 2.95 s, peak RSS
4.6 -> 6.4 GB; at 1M tokens the fragmented heap grew past 24 GB and the process was killed,
where the default allocator peaks near 17 GB. Use it up to a few hundred thousand tokens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def check_switch(name: str, value: object) -> bool:
    """A true/false config switch (`compile`, `cpu_keep_freed_memory`); anything else is an error."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def keep_freed_memory() -> str | None:
    """Make glibc malloc keep freed memory for reuse in this process.

    Returns None on success, else why it could not (not Linux, not glibc, mallopt refused); the
    process is then unchanged. Affects allocations made after the call, so call it early.
    """
    if not sys.platform.startswith("linux"):
        return f"needs glibc on Linux; this is {sys.platform}"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"no glibc mallopt in this process ({e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. No mmap-backed blocks: large tensors come from the heap;
    # a trim threshold of INT_MAX: freed heap memory is (practically) never given back.
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        return "glibc mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD"
    return None
