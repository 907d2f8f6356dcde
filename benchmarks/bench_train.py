"""Tiny-1k training throughput on CPU: our model vs a minimal implementation, same run.

    python benchmarks/bench_train.py [--preset tiny-1k] [--batch 8] [--length 1024] [--steps 10] [--compile]

One training step = forward, mean token cross-entropy, backward, AdamW step, zero_grad; tokens/s
counts batch x length per step. `baseline` is the same model (a copy of the same weights) built
with `use_fast_path=False`: every layer on the plain references of hyenadna.ops (module calls,
layout transposes, oneDNN depthwise conv, autograd through rfft/irfft at 2L), the minimal
implementation to compare against. The two alternate step by step (interleaved), best of --steps after one warm-up
step each; `noise` is how far the median step sat above the best. `--compile` adds `compiled`: a
third copy with its blocks under `hyenadna.compile.compile_model` (torch.compile, inductor),
interleaved with the other two; its first step, which compiles, is timed on its own.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
import time
from collections.abc import Callable

import torch
from common import add_memory_flags, apply_memory_flags, interleaved, machine, spread
from torch import Tensor

from hyenadna.compile import compile_model, is_compiled
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM


def main() -> None:
    """Print tokens/s of ours and of the baseline (and of the compiled copy with --compile), and their ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-1k")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd copy of ours")
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    torch.manual_seed(0)
    ours = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset, l_max=max(args.length, 1026)))
    base = HyenaDNAForCausalLM(replace(ours.config, use_fast_path=False))
    base.load_state_dict(ours.state_dict())
    data = torch.randint(7, 11, (args.batch, args.length + 1))
    ids, targets = data[:, :-1], data[:, 1:]
    with torch.no_grad():
        ours.eval(), base.eval()
        a, b = ours(ids, targets=targets).loss, base(ids, targets=targets).loss
        assert torch.allclose(a, b, rtol=1e-5), f"ours and baseline disagree: {a.item()} vs {b.item()}"
        ours.train(), base.train()

    def train_step(loss_fn: Callable[[], Tensor], opt: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            loss_fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)

    steps = {"baseline": train_step(lambda: base(ids, targets=targets).loss, adamw(base)),
             "ours": train_step(lambda: ours(ids, targets=targets).loss, adamw(ours))}
    compile_note = ""
    if args.compile:
        compiled = compile_model(copy.deepcopy(ours))
        with torch.random.fork_rng():  # the same embedding-dropout mask for both
            torch.manual_seed(1)
            start = time.perf_counter()
            loss_c = compiled(ids, targets=targets).loss.item()  # compiles forward and backward
            compile_s = time.perf_counter() - start
            torch.manual_seed(1)
            loss_o = ours(ids, targets=targets).loss.item()
        if not is_compiled(compiled):
            raise SystemExit("torch.compile fell back to eager (see the warning above): nothing to compare")
        assert abs(loss_o - loss_c) <= 1e-5 * abs(loss_o), f"ours and compiled disagree: {loss_o} vs {loss_c}"
        steps["compiled"] = train_step(lambda: compiled(ids, targets=targets).loss, adamw(compiled))
        compile_note = f"; compiled: inductor, first call (compiles fwd + bwd) {compile_s:.1f} s"

    t = interleaved(steps, args.steps)
    tokens = args.batch * args.length
    print(f"# machine: {machine()}; {memory}")
    print(f"# {args.preset} training step (fwd + loss + bwd + AdamW), batch {args.batch} x {args.length}, fp32, "
          f"best of {args.steps} interleaved steps{compile_note}")
    print(f"{'impl':>9} {'step ms':>8} {'tokens/s':>9} {'noise':>6}")
    for name, ts in t.items():
        best = min(ts)
        print(f"{name:>9} {best * 1e3:>8.1f} {tokens / best:>9,.0f} {spread(ts):>6}")
    print(f"speed-up: {min(t['baseline']) / min(t['ours']):.2f}x")
    if args.compile:
        print(f"compiled vs ours (eager): {min(t['ours']) / min(t['compiled']):.2f}x")


if __name__ == "__main__":
    main()
