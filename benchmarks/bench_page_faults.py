"""Where one Hyena operator step's CPU time goes at long L: user vs kernel (sys) time, page faults.

    python benchmarks/bench_page_faults.py [--length 262144] [--steps 3]
    python benchmarks/bench_page_faults.py --no-huge-pages      # 4 KB pages: the kernel's default
    python benchmarks/bench_page_faults.py --keep-freed-memory
    python benchmarks/bench_page_faults.py --length 65536 --count-allocations

Runs forward+backward of one operator (D=128, batch 1, fp32) once to warm up, then --steps more,
and prints per step: wall clock, user and sys CPU seconds, minor page faults (getrusage), and the
process's peak RSS. Every large tensor is a fresh mmap that the kernel faults in and zeroes: 2 MB
at a time with huge pages (the default here and in train.py), 4 KB at a time with
--no-huge-pages; --keep-freed-memory applies hyenadna.runtime.keep_freed_memory first, so freed
blocks are reused. --count-allocations adds one profiled step (torch.profiler, profile_memory)
and prints how much memory it allocated, also in units of one (D, L) fp32 tensor: the volume
the kernel has to map and zero when nothing is reused.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch
from common import add_memory_flags, apply_memory_flags, build_operator, machine
from torch.profiler import ProfilerActivity, profile



def main() -> None:
    """Print the per-step time split and page faults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1 << 18)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--count-allocations", action="store_true", help="also profile one step's allocations")
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    d, seqlen = args.d_model, args.length
    op = build_operator(d, seqlen)
    u = torch.randn(1, seqlen, d, requires_grad=True)
    grad = torch.randn(1, seqlen, d)
    op(u).backward(grad)  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        op(u).backward(grad)
        op.zero_grad(set_to_none=True)
        u.grad = None
    wall = (time.perf_counter() - start) / args.steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / args.steps
    sys_ = (after.ru_stime - before.ru_stime) / args.steps
    faults = (after.ru_minflt - before.ru_minflt) / args.steps
    print(f"# machine: {machine()}; {memory}")
    print(f"# Hyena operator fwd+bwd, D={d}, L={seqlen:,}, batch 1, fp32, mean of {args.steps} steps after a warm-up")
    print(f"{'wall s':>8} {'user s':>8} {'sys s':>8} {'page faults':>12} {'peak RSS GB':>12}")
    print(f"{wall:>8.4f} {user:>8.4f} {sys_:>8.4f} {faults:>12,.0f} {after.ru_maxrss / 1e6:>12.2f}")
    if args.count_allocations:
        allocated = allocated_bytes(lambda: op(u).backward(grad))
        unit = d * seqlen * 4
        print(f"# allocated in one profiled step: {allocated / 1e9:.2f} GB = {allocated / unit:.1f} x (D, L) fp32")


def allocated_bytes(fn: Callable[[], None]) -> int:
    """Bytes allocated while fn runs: the sum over ops of what each allocated and did not free
    itself (torch.profiler's self memory, where positive), so temporaries freed inside an op's
    own children still count once."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(0, e.self_cpu_memory_usage) for e in prof.events())


if __name__ == "__main__":
    main()
