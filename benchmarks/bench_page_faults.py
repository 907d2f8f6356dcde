"""Where one Hyena operator step's CPU time goes at long L: user vs kernel (sys) time, page faults.

    python benchmarks/bench_page_faults.py [--length 262144] [--steps 3]
    python benchmarks/bench_page_faults.py --no-huge-pages      # 4 KB pages: the kernel's default
    python benchmarks/bench_page_faults.py --keep-freed-memory

Runs forward+backward of one operator (D=128, batch 1, fp32) once to warm up, then --steps more,
and prints per step: wall clock, user and sys CPU seconds, minor page faults (getrusage), and the
process's peak RSS. Every large tensor is a fresh mmap that the kernel faults in and zeroes: 2 MB
at a time with huge pages (the default here and in train.py), 4 KB at a time with
--no-huge-pages; --keep-freed-memory applies hyenadna.runtime.keep_freed_memory first, so freed
blocks are reused.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from common import add_memory_flags, apply_memory_flags, machine

from hyenadna.model import HyenaConfig, HyenaOperator


def main() -> None:
    """Print the per-step time split and page faults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1 << 18)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    torch.manual_seed(0)
    d, seqlen = args.d_model, args.length
    c = HyenaConfig(d_model=d, l_max=seqlen)
    op = HyenaOperator(d, seqlen, emb_dim=c.emb_dim, filter_order=c.filter_order, num_inner_mlps=c.num_inner_mlps,
                       activation_freq=c.activation_freq, train_freq=c.train_freq, modulate=c.modulate,
                       fast_decay_pct=c.fast_decay_pct, slow_decay_pct=c.slow_decay_pct,
                       decay_target=c.decay_target, shift=c.shift)
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


if __name__ == "__main__":
    main()
