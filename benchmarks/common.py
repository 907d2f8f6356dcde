"""Timing helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from collections.abc import Callable

import torch
from torch import nn

from hyenadna.model import HyenaConfig, HyenaOperator
from hyenadna.ops.buffers import buffer_pool
from hyenadna.runtime import huge_pages_state, keep_freed_memory, thread_settings, use_huge_pages


def machine() -> str:
    """One line naming the CPU, core count, torch version and thread count the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def operator_config(d: int, l_max: int) -> HyenaConfig:
    """The config of `build_operator`'s operator."""
    return HyenaConfig(d_model=d, l_max=l_max)


def build_operator(d: int, l_max: int) -> nn.Module:
    """One order-2 Hyena operator of width d with the default filter settings, seeded 0."""
    torch.manual_seed(0)
    return HyenaOperator.from_config(operator_config(d, l_max))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                alternate: bool = False, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Wall times (s) of each function, run in turns (a, b, c, a, b, c, ...) so that load from other
    processes on the shared cores hits every variant alike; `warmup` untimed rounds first. With
    `alternate`, every other round runs in reverse order (a, b, b, a, a, b, ...), so that no
    variant always runs right after the same other one: a function that follows a memory-heavy
    one is measurably slower. `clock`: wall time by default; `time.process_time` (this process's
    CPU time, user + system) leaves out the time a loaded machine's run queue keeps it waiting."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns.items())
        for name, fn in reversed(order) if alternate and r % 2 else order:
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def spread(ts: list[float]) -> str:
    """Noise of a best-of-N figure: how far the median sits above the best, in percent."""
    s = sorted(ts)
    return f"+{(s[len(s) // 2] / s[0] - 1) * 100:.0f}%"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def add_memory_flags(p: argparse.ArgumentParser) -> None:
    """--no-huge-pages, --keep-freed-memory and --no-buffer-reuse: the process-level settings of
    hyenadna/runtime.py."""
    p.add_argument("--no-huge-pages", action="store_true",
                   help="CPU tensors on 4 KB pages (the default here, as in train.py, is 2 MB transparent huge "
                        "pages: THP_MEM_ALLOC_ENABLE=1)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed memory for reuse (hyenadna.runtime.keep_freed_memory): long "
                        "sequences stop paying the kernel to fault in and zero fresh pages every step")
    p.add_argument("--no-buffer-reuse", action="store_true",
                   help="the model's large CPU buffers are allocated fresh at every step (the default reuses "
                        "them across steps: hyenadna.ops.buffers.BufferPool, cpu_reuse_buffers in the configs)")


def apply_memory_flags(args: argparse.Namespace) -> str:
    """Apply the flags of `add_memory_flags`; call before any tensor is allocated. Returns the
    settings in words, for the header line (an unmet request exits with its reason)."""
    use_huge_pages(not args.no_huge_pages)
    on, why = huge_pages_state()
    if not args.no_huge_pages and not on:
        raise SystemExit(f"huge pages requested but off: {why} (--no-huge-pages to run without)")
    if args.keep_freed_memory and (why := keep_freed_memory()):
        raise SystemExit(f"--keep-freed-memory: {why}")
    buffer_pool.enable(not args.no_buffer_reuse)
    return (f"huge pages {'on' if on else 'off'}; "
            f"freed memory {'kept for reuse' if args.keep_freed_memory else 'returned (default)'}; "
            f"model buffers {'reused' if buffer_pool.enabled else 'fresh each step'}")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_thread_flags(p: argparse.ArgumentParser) -> None:
    """--threads: PyTorch's intra-op threads for the run (default: PyTorch's, i.e. OMP_NUM_THREADS);
    --clock: what a timing measures."""
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time (default), or this process's CPU time (user + system: leaves out the "
                        "waits of a loaded machine; meaningful with --threads 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: PyTorch's own, which follows OMP_NUM_THREADS)")


def apply_thread_flags(args: argparse.Namespace) -> str:
    """Apply --threads; returns the thread settings in words, for the header line."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return thread_settings()
