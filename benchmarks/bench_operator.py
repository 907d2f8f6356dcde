"""Hyena operator forward+backward: ours vs the official structure vs our plain references vs causal attention.

    python benchmarks/bench_operator.py                      # D=128, L = 1k..64k, then 256k and 1M
    python benchmarks/bench_operator.py --lengths 1024 4096 --long-lengths --repeats 3
    python benchmarks/bench_operator.py --batch 8 --lengths 1024 2048 4096 --long-lengths   # the tiny-1k training batch
    python benchmarks/bench_operator.py --lengths 1024 --long-lengths 262144 1048576 --long-repeats 1 \
        --keep-freed-memory --no-long-baseline       # scaling to 1M with freed memory reused

Four implementations of one layer of width D, batch 1 (--batch), fp32, timed in turns in the same run:
  ours      hyenadna.model.HyenaOperator (the fast kernels of hyenadna.ops)
  official  benchmarks/official.py's operator, the official implementation's structure op for op
            (rfft at n = 2L per call, einops rearranges, nn.Conv1d, the filter MLP through autograd
            every forward), loaded with the same weights; outputs checked equal
  baseline  the same operator on the plain references, `HyenaOperator.forward_ref`
            (hyenadna.ops.hyena_operator_ref: module calls, layout transposes, nn.Conv1d's short
            conv, autograd through rfft/irfft at n = 2L); same parameters, outputs checked equal
  sdpa      causal multi-head attention of the same width (8 heads x 16): qkv projection,
            torch scaled_dot_product_attention, output projection
Best of --repeats (4x as many up to 4k); `noise` is how far the median of `ours` sat above its best. The scaling column
divides ours' time at L by its time at the first L, over the ideal ratio (L log L) / (L0 log L0).
"""

from __future__ import annotations

import argparse
import math
import resource

import torch
import torch.nn.functional as F
from common import (CLOCKS, add_memory_flags, add_thread_flags, apply_memory_flags, apply_thread_flags, build_operator,
                    interleaved, machine, operator_config, spread)
from official import official_operator_from
from torch import Tensor, nn

from hyenadna.ops.buffers import buffer_pool


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention layer of width D through torch's scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        b, seq_len, d = x.shape
        q, k, v = self.qkv(x).view(b, seq_len, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, seq_len, d))


def fwd_bwd(fn, module: nn.Module, u: Tensor, grad: Tensor):  # type: ignore[no-untyped-def]
    """A closure running one forward and backward of fn(u), dropping the grads afterwards."""
    def run() -> None:
        fn(u).backward(grad)
        module.zero_grad(set_to_none=True)
        u.grad = None
    return run


def main() -> None:
    """Print the fwd+bwd table (1k..64k) and the forward / fwd+bwd table at long lengths."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--lengths", type=int, nargs="+", default=[1 << i for i in range(10, 17)])
    p.add_argument("--batch", type=int, default=1, help="sequences per call in the 1k-64k table (long ones: 1)")
    p.add_argument("--long-lengths", type=int, nargs="*", default=[1 << 18, 1 << 20])
    p.add_argument("--sdpa-max", type=int, default=16384, help="longest L for attention (O(L^2) time)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--long-repeats", type=int, default=2)
    add_memory_flags(p)
    add_thread_flags(p)
    p.add_argument("--no-long-baseline", action="store_true",
                   help="time only ours at the long lengths (the baseline's own tensors stay out of the heap)")
    args = p.parse_args()
    threads = apply_thread_flags(args)
    memory = apply_memory_flags(args)
    d = args.d_model
    op = build_operator(d, max(args.lengths + args.long_lengths))
    official = official_operator_from(op, operator_config(d, max(args.lengths + args.long_lengths)))
    attn = CausalSelfAttention(d, n_head=8)
    print(f"# machine: {machine()}; {threads}; {memory}; clock: {args.clock}")
    print(f"# Hyena operator vs official structure vs baseline vs causal SDPA, D={d}, batch {args.batch}, fp32, "
          f"forward+backward, best of {args.repeats} (interleaved)")
    print(f"{'L':>8} {'official ms':>12} {'baseline ms':>12} {'ours ms':>9} {'vs official':>12} {'vs baseline':>12} "
          f"{'sdpa ms':>9} {'sdpa/ours':>10} {'scaling/ideal':>14} {'noise':>6}")
    first: tuple[int, float] | None = None
    for seq_len in args.lengths:
        u = torch.randn(args.batch, seq_len, d, requires_grad=True)
        grad = torch.randn(args.batch, seq_len, d)
        with torch.no_grad():
            ref, out, off = op.forward_ref(u), op(u), official(u)
            for name, other in (("baseline", ref), ("official", off)):
                err = ((out - other).norm() / other.norm()).item()
                assert err < 1e-5, f"ours differs from the {name} at L={seq_len}: relative error {err:.2e}"
        fns = {"official": fwd_bwd(official, official, u, grad),
               "baseline": fwd_bwd(op.forward_ref, op, u, grad),
               "ours": fwd_bwd(op, op, u, grad)}
        if seq_len <= args.sdpa_max:
            fns["sdpa"] = fwd_bwd(attn, attn, u, grad)
        # Short runs are the most exposed to other processes on shared cores: give them more tries.
        t = interleaved(fns, args.repeats * 4 if seq_len <= 4096 else args.repeats, alternate=True,
                        clock=CLOCKS[args.clock])
        off, base, ours = min(t["official"]), min(t["baseline"]), min(t["ours"])
        first = first or (seq_len, ours)
        ideal = seq_len * math.log2(seq_len) / (first[0] * math.log2(first[0]))
        sdpa = f"{min(t['sdpa']) * 1e3:>9.1f} {min(t['sdpa']) / ours:>9.1f}x" if "sdpa" in t else f"{'-':>9} {'-':>10}"
        print(f"{seq_len:>8} {off * 1e3:>12.1f} {base * 1e3:>12.1f} {ours * 1e3:>9.1f} {off / ours:>11.2f}x "
              f"{base / ours:>11.2f}x {sdpa} "
              f"{ours / first[1] / ideal:>14.2f} {spread(t['ours']):>6}", flush=True)
    if not args.long_lengths:
        return
    print(f"\n# long sequences, D={d}, batch 1, fp32, best of {args.long_repeats} (one implementation after the other); "
          f"scaling is fwd+bwd time over the L={first[0] if first else '-'} figure, over ideal L log L")
    print(f"{'L':>8} {'base fwd s':>11} {'ours fwd s':>11} {'speed-up':>9} {'base f+b s':>11} {'ours f+b s':>11} "
          f"{'speed-up':>9} {'scaling/ideal':>14}")
    for seq_len in args.long_lengths:
        u = torch.randn(1, seq_len, d, requires_grad=True)
        grad = torch.randn(1, seq_len, d)
        impls = {"ours": op} if args.no_long_baseline else {"baseline": op.forward_ref, "ours": op}
        # One implementation after the other, not in turns: ours keeps its large buffers for the
        # next step (hyenadna.ops.buffers.BufferPool), which at 1M would sit idle beside the
        # baseline's own gigabytes; they are released before each implementation's runs.
        fwd, t = {}, {}
        for k, f in impls.items():
            buffer_pool.release()
            with torch.no_grad():
                fwd[k] = interleaved({k: lambda f=f: f(u)}, args.long_repeats, warmup=0)[k]
            t[k] = interleaved({k: fwd_bwd(f, op, u, grad)}, args.long_repeats, warmup=0)[k]
        of, ob = min(fwd["ours"]), min(t["ours"])
        bf, bb = (min(fwd["baseline"]), min(t["baseline"])) if "baseline" in t else (math.nan, math.nan)
        scale = "-"
        if first:
            ideal = seq_len * math.log2(seq_len) / (first[0] * math.log2(first[0]))
            scale = f"{ob / first[1] / ideal:.2f}"
        print(f"{seq_len:>8} {bf:>11.2f} {of:>11.2f} {bf / of:>8.2f}x {bb:>11.2f} {ob:>11.2f} {bb / ob:>8.2f}x "
              f"{scale:>14}", flush=True)
    # ru_maxrss is in kilobytes on Linux
    print(f"# peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
