"""Where one Hyena operator step's CPU time goes at long L: user vs kernel (sys) time, page faults.

    python benchmarks/bench_page_faults.py [--length 262144] [--steps 3]
    python benchmarks/bench_page_faults.py --no-huge-pages      # 4 KB pages: the kernel's default
    python benchmarks/bench_page_faults.py --no-buffer-reuse   # the model's large buffers fresh every step
    python benchmarks/bench_page_faults.py --keep-freed-memory
    python benchmarks/bench_page_faults.py --length 65536 --count-allocations
    python benchmarks/bench_page_faults.py --model        # a whole tiny LM training step instead

Runs forward+backward of one operator (D=128, batch 1, fp32) once to warm up, then --steps more
(with --model: the tiny LM, 2 layers of width D, forward + next-token loss + backward + AdamW),
and prints per step: wall clock, user and sys CPU seconds, minor page faults (getrusage), and the
process's peak RSS. Every large tensor is a fresh mmap that the kernel faults in and zeroes: 2 MB
at a time with huge pages (the default here and in train.py), 4 KB at a time with
--no-huge-pages. The model's Functions reuse their large buffers across steps unless
--no-buffer-reuse (hyenadna.ops.buffers.BufferPool); --keep-freed-memory applies
hyenadna.runtime.keep_freed_memory first, so every freed block is reused. --count-allocations
adds one profiled step (torch.profiler, profile_memory) and prints how much memory it allocated
afresh, also in units of one (D, L) fp32 tensor: the volume the kernel has to map and zero when
nothing is reused.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch
from common import add_memory_flags, apply_memory_flags, build_operator, machine
from torch.profiler import ProfilerActivity, profile

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM


def main() -> None:
    """Print the per-step time split and page faults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1 << 18)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--count-allocations", action="store_true", help="also profile one step's allocations")
    p.add_argument("--model", action="store_true",
                   help="a training step of the tiny LM (2 layers of width --d-model, loss, AdamW) instead of one operator")
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    d, seq_len = args.d_model, args.length
    step = model_step(d, seq_len) if args.model else operator_step(d, seq_len)
    step()  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - start) / args.steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / args.steps
    sys_ = (after.ru_stime - before.ru_stime) / args.steps
    faults = (after.ru_minflt - before.ru_minflt) / args.steps
    print(f"# machine: {machine()}; {memory}")
    what = "tiny LM (2 layers) fwd + loss + bwd + AdamW" if args.model else "Hyena operator fwd+bwd"
    print(f"# {what}, D={d}, L={seq_len:,}, batch 1, fp32, mean of {args.steps} steps after a warm-up")
    print(f"{'wall s':>8} {'user s':>8} {'sys s':>8} {'page faults':>12} {'peak RSS GB':>12}")
    print(f"{wall:>8.4f} {user:>8.4f} {sys_:>8.4f} {faults:>12,.0f} {after.ru_maxrss / 1e6:>12.2f}")
    if args.count_allocations:
        allocated = allocated_bytes(step)
        unit = d * seq_len * 4
        print(f"# allocated in one profiled step: {allocated / 1e9:.2f} GB = {allocated / unit:.1f} x (D, L) fp32")


def operator_step(d: int, seq_len: int) -> Callable[[], None]:
    """One forward+backward of a Hyena operator on a fixed (1, L, D) input, grads dropped after."""
    op = build_operator(d, seq_len)
    u = torch.randn(1, seq_len, d, requires_grad=True)
    grad = torch.randn(1, seq_len, d)

    def step() -> None:
        op(u).backward(grad)
        op.zero_grad(set_to_none=True)
        u.grad = None
    return step


def model_step(d: int, seq_len: int) -> Callable[[], None]:
    """One training step of a 2-layer LM of width d on one random DNA sequence of L tokens."""
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig(d_model=d, n_layer=2, l_max=seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(7, 11, (1, seq_len + 1))  # A, C, G, T

    def step() -> None:
        model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def allocated_bytes(fn: Callable[[], None]) -> int:
    """Bytes allocated while fn runs: the sum over ops of what each allocated and did not free
    itself (torch.profiler's self memory, where positive), so temporaries freed inside an op's
    own children still count once."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(0, e.self_cpu_memory_usage) for e in prof.events())


if __name__ == "__main__":
    main()
