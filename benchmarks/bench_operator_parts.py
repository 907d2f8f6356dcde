"""Where one Hyena operator fwd+bwd step goes, part by part, in wall-clock time.

    python benchmarks/bench_operator_parts.py                    # D=128, batch 1, L = 1024
    python benchmarks/bench_operator_parts.py --length 2048 --steps 300
    python benchmarks/bench_operator_parts.py --length 262144 --steps 3 --warmup 1

Wraps the forward and backward of each autograd Function the operator is made of (projections,
short conv, implicit filter, gated FFT conv) with a timer, runs --steps fwd+bwd steps, and prints
the mean over the fastest tenth of the steps (the least disturbed by other jobs on shared cores):
each part's time, the step's forward and backward totals, and what is left outside the parts
("other": autograd bookkeeping and the Python between the parts). Unlike torch.profiler, which adds
its own cost to every op, this times the step as it runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from common import add_memory_flags, apply_memory_flags, build_operator, machine

from hyenadna.ops import GatedFFTConvFn, ImplicitFilterFn, ProjectionFn, ShortConvFn

PARTS = {"projections": ProjectionFn, "short conv": ShortConvFn, "implicit filter": ImplicitFilterFn,
         "gated FFT conv": GatedFFTConvFn}


def timed(fn: Callable[..., Any], key: str, acc: dict[str, float]) -> Callable[..., Any]:
    """fn, adding its wall time to acc[key] on every call."""
    def run(*args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        acc[key] = acc.get(key, 0.0) + time.perf_counter() - start
        return out
    return run


def main() -> None:
    """Print the per-part table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    acc: dict[str, float] = {}
    for name, fn_class in PARTS.items():
        for kind in ("forward", "backward"):
            setattr(fn_class, kind, staticmethod(timed(getattr(fn_class, kind), f"{name} {kind}", acc)))
    op = build_operator(args.d_model, args.length)
    u = torch.randn(args.batch, args.length, args.d_model, requires_grad=True)
    grad = torch.randn(args.batch, args.length, args.d_model)
    steps: list[dict[str, float]] = []
    for i in range(args.warmup + args.steps):
        acc.clear()
        start = time.perf_counter()
        y = op(u)
        mid = time.perf_counter()
        y.backward(grad)
        end = time.perf_counter()
        op.zero_grad(set_to_none=True)
        u.grad = None
        if i >= args.warmup:
            steps.append({**acc, "forward total": mid - start, "backward total": end - mid})
    steps.sort(key=lambda s: s["forward total"] + s["backward total"])
    best = steps[:max(1, len(steps) // 10)]
    mean = {k: sum(s.get(k, 0.0) for s in best) / len(best) for k in best[0]}
    total = mean["forward total"] + mean["backward total"]
    print(f"# machine: {machine()}; {memory}")
    print(f"# Hyena operator fwd+bwd, D={args.d_model}, L={args.length:,}, batch {args.batch}, fp32: "
          f"mean of the fastest {len(best)} of {len(steps)} steps")
    print(f"{'part':<34} {'ms':>9} {'share':>6}")
    for kind in ("forward", "backward"):
        inside = 0.0
        for name in PARTS:
            t = mean.get(f"{name} {kind}", 0.0)
            inside += t
            print(f"{name + ' ' + kind:<34} {t * 1e3:>9.3f} {t / total:>6.0%}")
        other = mean[f"{kind} total"] - inside
        print(f"{'other ' + kind:<34} {other * 1e3:>9.3f} {other / total:>6.0%}")
    print(f"{'step':<34} {total * 1e3:>9.3f}")


if __name__ == "__main__":
    main()
