"""Large CPU tensors for the kernels' autograd Functions, kept and reused across steps.

PyTorch's CPU allocator has no cache, and glibc maps every block above its mmap threshold
(32 MB at most) fresh and unmaps it when freed, so at long L each training step would fault in
and zero every large activation and gradient again; at L = 1M that is a large share of the step
(`python benchmarks/bench_page_faults.py --length 1048576 [--no-buffer-reuse]` shows the
difference). `hyenadna.runtime.keep_freed_memory` cures that for the whole process, at the
price of a heap that keeps its peak and fragments; this pool keeps only the kernels' own large
buffers. `cpu_reuse_buffers: false` in the train/finetune configs turns it off.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch

from hyenadna.ops.common import POOL_MIN_BYTES, POOL_STALE_AFTER


class BufferPool:
    """Storages of one exact byte size each, handed out again once nothing references them.

    - `empty(shape, dtype, device)` returns a tensor on a kept storage of that byte size that
      nothing else references any more (its use count is the pool's own), else on a new one. A
      tensor still saved for backward, returned to autograd or held by anyone keeps its storage
      out of reuse, so a buffer is never shared while alive (retain_graph and activation
      checkpointing included).
    - Handed-out tensors are not views (`Tensor.set_` on the storage), so in-place ops on a
      Function's output behave as on a fresh tensor. Their contents are whatever the last user
      left: every caller writes before it reads, as with `torch.empty`.
    - A storage not handed out for `stale_after` requests is released; `release()` drops every
      idle one.
    - Requests below `min_bytes`, on other devices (CUDA has its caching allocator), under
      inference mode (inference tensors must not reach a training step) and while torch.compile
      traces are plain `torch.empty`.

    Idle storages stay resident between steps, so the peak resident size is higher than with
    fresh buffers; `enable(False)` turns the pool off.
    """

    def __init__(self, min_bytes: int = POOL_MIN_BYTES, stale_after: int = POOL_STALE_AFTER) -> None:
        self.min_bytes, self.stale_after = min_bytes, stale_after
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)  # absent in some torch: no reuse
        self.available = self._use_count is not None
        self.enabled = self.available
        self._storages: dict[int, list[list[Any]]] = {}  # nbytes -> [[storage, last request], ...]
        self._requests = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """An uninitialised contiguous tensor of that shape and dtype on that device; on a reused
        storage when it is large, on CPU, outside inference mode and the pool is enabled."""
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


buffer_pool = BufferPool()  # the one the kernels draw from (through `pooled_empty`)


def pooled_empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty for the kernels' large activations and gradients, from `buffer_pool` (looked
    up at call time, so a test can swap the pool)."""
    return buffer_pool.empty(tuple(shape), dtype, device)
