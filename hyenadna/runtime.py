"""CPU memory settings: transparent huge pages for tensors, the pool that keeps the model's large
buffers across steps (`BufferPool`, at the end), and (opt-in) freed memory kept for reuse by glibc
malloc for the whole process.

Huge pages (`use_huge_pages`, on by default as `cpu_huge_pages` in the train/finetune configs):
PyTorch's CPU allocator asks the kernel for 2 MB transparent huge pages for every tensor of 2 MB
or more when the environment variable THP_MEM_ALLOC_ENABLE is 1. PyTorch reads the variable once,
at its first CPU allocation, so it must be set before then: train.py and finetune.py set it
before importing Lightning (whose import allocates). A large tensor is then faulted in 2 MB at a
time instead of 4 KB: at L = 1M the Hyena operator's forward+backward took 7.9M page faults per
step without and 42k with, 24.0 s -> 15.3 s, peak RSS unchanged (`benchmarks/bench_page_faults.py`;
256k: 6.6 s -> 2.9 s).
It needs the kernel's THP mode to be `madvise` or `always`
(/sys/kernel/mm/transparent_hugepage/enabled).

Those page-aligned requests bypass glibc's adaptive mmap threshold, so on their own they would
make every tensor between 2 and 32 MB a fresh mmap, faulted in again on each use (a 3 MB tensor
cost 769 page faults per allocation, `tests/test_runtime.py`). `use_huge_pages` therefore also fixes
glibc's mmap threshold at its 64-bit maximum, 32 MB, with a trim threshold of 64 MB (the pair
glibc's own adaptive rule would reach): smaller blocks are reused from the heap; larger ones are
still mapped fresh and handed back when freed, so the peak resident size stays as it was
(benchmarks/bench_page_faults.py and bench_long.py with and without --no-huge-pages).

Freed memory (`keep_freed_memory`): PyTorch's CPU allocator has no cache: every activation is a fresh `malloc`, and glibc serves
requests above its mmap threshold (at most 32 MB) with a new `mmap` that `free` hands back to the
kernel. A long-sequence step allocates and frees gigabytes, so the kernel faults in and zeroes
every page again on each step: at L = 256k (D = 128) the Hyena operator's forward+backward spent
more CPU time in the kernel than in PyTorch (`benchmarks/README.md`). `keep_freed_memory()` tells
glibc to serve every request from its heap and never return freed memory to the kernel, so the
next step reuses pages that are already mapped. The price is a higher peak resident size (freed
blocks stay in the process, and the heap fragments), so it is opt-in (`cpu_keep_freed_memory`
in the train/finetune configs, `--keep-freed-memory` in the benchmarks). Since the model's own
large buffers are reused (`BufferPool`), it gains nothing measurable for the operator alone, but a
whole model allocates outside the pool too (MLP, norms, LM head): a tiny-LM training step at 256k
took 18.1 s with it and 26.3 s without, peak RSS 12.0 against 9.8 GB (`bench_page_faults.py
--model`, a slow hour of the VM). Measured on the 2-core,
24 GB VM before huge pages (benchmarks/README.md): operator fwd+bwd at 256k tokens 5.24 s ->
2.95 s, peak RSS 4.6 -> 6.4 GB; at 1M tokens the fragmented heap grew past 24 GB and the process
was killed, where the default allocator peaks near 17 GB. With huge pages on and fewer
allocations per step (2026-12-02, `benchmarks/bench_page_faults.py --length L --keep-freed-memory`):
256k 2.6 s instead of 3.6 s (peak 5.4 instead of 4.4 GB), 1M 11.6 s instead of 14.6 s (peak 19.7
instead of 16.6 GB, within the 24 GB VM). With the buffer pool on (a11ef34): 1M 11.5 s with it,
11.6 s without, peak 20.3 against 18.7 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_INT_MAX = 2**31 - 1

THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator (c10 alloc_cpu) at its first allocation
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def check_switch(name: str, value: object) -> bool:
    """A true/false config switch (`compile`, `cpu_reuse_buffers`, ...); anything else is an error."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _glibc_mallopt():  # type: ignore[no-untyped-def]
    """glibc's mallopt(param, value) -> 1 on success, or a string saying why there is none."""
    if not sys.platform.startswith("linux"):
        return f"needs glibc on Linux; this is {sys.platform}"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"no glibc mallopt in this process ({e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> str | None:
    """Make glibc malloc keep freed memory for reuse in this process.

    Returns None on success, else why it could not (not Linux, not glibc, mallopt refused); the
    process is then unchanged. Affects allocations made after the call, so call it early.
    """
    mallopt = _glibc_mallopt()
    if isinstance(mallopt, str):
        return mallopt
    # No mmap-backed blocks: large tensors come from the heap; a trim threshold of INT_MAX:
    # freed heap memory is (practically) never given back.
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        return "glibc mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD"
    return None


def use_huge_pages(enabled: bool = True) -> None:
    """Set THP_MEM_ALLOC_ENABLE for this process (1 or 0); when enabling on Linux, also fix glibc's
    mmap threshold at 32 MB (module docstring; a warning where mallopt is missing or refuses).
    The variable is effective only if PyTorch has not yet allocated a CPU tensor:
    `huge_pages_state` tells whether it took."""
    os.environ[THP_ENV] = "1" if enabled else "0"
    if not enabled or not sys.platform.startswith("linux"):
        return
    mallopt = _glibc_mallopt()
    if isinstance(mallopt, str):
        warnings.warn(f"huge pages without the 32 MB mmap threshold: {mallopt}", RuntimeWarning, stacklevel=2)
    elif mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) != 1 or mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) != 1:
        warnings.warn("huge pages without the 32 MB mmap threshold: glibc mallopt refused it", RuntimeWarning,
                      stacklevel=2)


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: 'always', 'madvise' or 'never' ('unknown' where
    the file is missing or unreadable, e.g. not Linux). PyTorch's requests need always or madvise."""
    try:
        return THP_MODE_FILE.read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unknown"


def huge_pages_state() -> tuple[bool, str]:
    """(on, why): whether large CPU tensors get transparent huge pages in this process, and why not.

    Probes the allocator: with THP allocation on, PyTorch page-aligns tensors of 2 MB or more
    (otherwise it aligns to 64 bytes and glibc's mmap'ed blocks start 64 bytes into a page).
    """
    import torch

    if not sys.platform.startswith("linux"):
        return False, f"transparent huge pages are Linux-only; this is {sys.platform}"
    mode = thp_mode()
    if mode == "never":
        return False, f"the kernel's THP mode is 'never' ({THP_MODE_FILE})"
    probes = [torch.empty(3 << 20, dtype=torch.uint8) for _ in range(3)]
    if not all(p.data_ptr() % 4096 == 0 for p in probes):
        if os.environ.get(THP_ENV, "0").strip() in ("", "0"):
            return False, f"{THP_ENV} is not 1"
        return False, (f"{THP_ENV}=1 was set after PyTorch's first CPU allocation, when it reads the "
                       f"variable (set it before importing Lightning, or in the shell)")
    return True, f"on (kernel THP mode '{mode}')"


class BufferPool:
    """Large CPU tensors for the model's hand-written autograd Functions, reused across steps.

    PyTorch's CPU allocator has no cache, and glibc maps every block above its mmap threshold
    (32 MB at most) fresh and unmaps it when freed, so at long L each step faults in and zeroes
    every large activation again: at L = 1M (D = 128) 41 (D, L)-sized tensors per operator step,
    with 11.6 of 26.4 CPU seconds spent in the kernel (`benchmarks/bench_page_faults.py
    --no-buffer-reuse`). `keep_freed_memory` cures that for the whole process, at the price of a
    heap that keeps its peak and fragments. This pool keeps only the model's own large buffers,
    each on a storage of one exact byte size:

    - `empty(shape, dtype)` hands out a tensor on a kept storage of that size that nothing else
      references any more (its use count is the pool's own), else allocates a new one. A tensor
      still saved for backward, returned to autograd or held by anyone keeps its storage out of
      reuse, so a buffer is never shared while alive (retain_graph and checkpointing included).
    - Handed-out tensors are not views (`Tensor.set_` on the storage), so in-place ops on a
      Function's output behave as on a fresh tensor. Their contents are whatever the last user
      left: every caller writes before it reads, as with `torch.empty`.
    - A storage not handed out for `stale_after` requests (its shape is gone: a warmup stage
      changed L, the last batch was smaller) is released; `release()` drops every idle one.
    - Requests below `min_bytes` (glibc's mmap threshold: those come back from the heap anyway),
      on other devices (CUDA has its caching allocator), under inference mode (inference tensors
      must not reach a training step) and while torch.compile traces are plain `torch.empty`.

    Idle storages stay resident between steps (validation runs beside them): at 1M tokens the
    operator step's peak RSS was 18.7 GB instead of 16.6 GB, the step 11.6 s instead of 13.8 s.
    `enable(False)` (`cpu_reuse_buffers: false`) turns it off.
    """

    def __init__(self, min_bytes: int = _MMAP_THRESHOLD_MAX, stale_after: int = 256) -> None:
        import threading

        import torch

        self.min_bytes, self.stale_after = min_bytes, stale_after
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)  # absent in some torch: no reuse
        self.available = self._use_count is not None
        self.enabled = self.available
        self._storages: dict[int, list[list[Any]]] = {}  # nbytes -> [[storage, last request], ...]
        self._requests = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """An uninitialised contiguous tensor of that shape and dtype on that device; on a reused
        storage when it is large, on CPU, outside inference mode and the pool is enabled."""
        import torch

        # Tracing first: under torch.compile the size test would put a guard on symbolic shapes.
        if torch.compiler.is_compiling() or not self.enabled:
            return torch.empty(shape, dtype=dtype, device=device)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.min_bytes or torch.device(device).type != "cpu" or torch.is_inference_mode_enabled():
            return torch.empty(shape, dtype=dtype, device=device)
        with self._lock:  # held until set_ takes its reference: no other thread sees the storage idle
            self._requests += 1
            if self._requests % self.stale_after == 0:
                self._drop_stale()
            entry = next((e for e in self._storages.get(nbytes, ()) if self._idle(e)), None)
            if entry is None:
                self._drop_stale()  # before growing
                entry = [torch.empty(nbytes, dtype=torch.uint8).untyped_storage(), 0]
                self._storages.setdefault(nbytes, []).append(entry)
            entry[1] = self._requests
            return torch.empty(0, dtype=dtype).set_(entry[0], 0, shape)

    def enable(self, on: bool) -> None:
        """Reuse buffers from now on (where this torch can tell a storage's use count) or not."""
        self.enabled = on and self.available

    def _idle(self, entry: list[Any]) -> bool:
        return self._use_count(entry[0]._cdata) == 1  # only the pool's own reference

    def _drop_stale(self) -> None:
        for nbytes, kept in list(self._storages.items()):
            kept[:] = [e for e in kept if self._requests - e[1] < self.stale_after or not self._idle(e)]
            if not kept:
                del self._storages[nbytes]

    def release(self) -> int:
        """Drop every idle storage (its memory goes back to the system); -> bytes released."""
        released = 0
        with self._lock:
            for nbytes, kept in list(self._storages.items()):
                busy = [e for e in kept if not self._idle(e)]
                released += nbytes * (len(kept) - len(busy))
                kept[:] = busy
                if not kept:
                    del self._storages[nbytes]
        return released

    def held_bytes(self) -> int:
        """Bytes of every kept storage, idle or in use."""
        return sum(nbytes * len(kept) for nbytes, kept in self._storages.items())


buffers = BufferPool()  # the one hyenadna.model's Functions draw from
