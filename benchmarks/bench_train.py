"""Whole-model speed on CPU: ours vs the official-structured baseline vs our plain references, one run.

    python benchmarks/bench_train.py [--preset tiny-1k] [--batch 8] [--length 1024] [--steps 10] [--compile]
    python benchmarks/bench_train.py --fwd-bwd-lengths 1024,4096,16384,65536 [--no-train]

Three copies of the same weights, timed in turns (interleaved, every other round in reverse order)
so that load from other processes hits all alike:
  ours       HyenaDNAForCausalLM, the fast kernels of hyenadna.ops
  official   benchmarks/official.py: the official implementation's structure op for op (rfft at
             n = 2L per call, einops rearranges, nn.Conv1d short filter, the filter MLP through
             autograd at every forward, dropout modules, two-stream prenorm blocks, tied head)
  reference  the same model built with use_fast_path=False (hyenadna.ops' plain references)
Before timing, the logits, loss and every gradient of `official` and `reference` are checked
against ours (relative error < 1e-4).

Training step (the default table) = forward, mean token cross-entropy, backward, AdamW step,
zero_grad; tokens/s counts batch x length. `--fwd-bwd-lengths` adds a table of forward + loss +
backward of the whole model at batch --fwd-bwd-batch (1) for each length. Best of --steps (more
at short lengths) after one warm-up round; `noise` is how far ours' median sat above its best.
`--compile` adds `compiled` to the training table (hyenadna.compile.compile_model; its first,
compiling call is timed on its own). `--products` then times ours' matrix products inside
--steps more training steps (every call of `hyenadna.ops.gemm.matmul_nt`, through which all
but the filter MLP's small ones go) and prints their share of the step and the ceiling it sets:
the official step over that share of ours' best step, the ratio ours would reach if nothing else
took time.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from common import (CLOCKS, add_memory_flags, add_thread_flags, apply_memory_flags, apply_thread_flags, interleaved,
                    machine, spread)
from official import OfficialLM
from torch import Tensor, nn

from hyenadna.compile import compile_model, is_compiled
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.ops import gemm


def check_same(ours: HyenaDNAForCausalLM, others: dict[str, Callable[[Tensor, Tensor], Tensor]],
               models: dict[str, nn.Module], ids: Tensor, targets: Tensor) -> None:
    """Loss and every parameter gradient of each other implementation equal ours (train mode, same
    dropout mask), relative error < 1e-4; exits naming the first that differs."""
    torch.manual_seed(5)
    loss = ours(ids, targets=targets).loss
    want = torch.autograd.grad(loss, list(ours.parameters()))
    for name, fn in others.items():
        torch.manual_seed(5)
        other = fn(ids, targets)
        theirs = dict(models[name].named_parameters())
        names = [n for n, _ in ours.named_parameters()]
        got = torch.autograd.grad(other, [theirs[n] for n in names])
        if abs(other.item() - loss.item()) > 1e-5 * abs(loss.item()):
            raise SystemExit(f"{name} loss {other.item()} differs from ours {loss.item()}")
        for pname, a, b in zip(names, got, want):
            err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
            if err > 1e-4:
                raise SystemExit(f"{name}: gradient of {pname} differs from ours (relative error {err:.1e})")


def product_share(step: Callable[[], None], steps: int, clock: Callable[[], float]) -> tuple[float, float]:
    """(seconds in `hyenadna.ops.gemm.matmul_nt` per step, seconds per step) over `steps` calls
    of `step`, the products timed call by call with `clock`."""
    spent = [0.0]
    original = gemm.matmul_nt

    def timed(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
        start = clock()
        out = original(a, b, bias)
        spent[0] += clock() - start
        return out

    gemm.matmul_nt = timed  # matmul_tn and the ops modules look it up at each call
    try:
        start = clock()
        for _ in range(steps):
            step()
        total = clock() - start
    finally:
        gemm.matmul_nt = original
    return spent[0] / steps, total / steps


def main() -> None:
    """Print the training table (and the fwd+bwd table with --fwd-bwd-lengths) with both ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-1k")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-train", action="store_true", help="skip the training-step table")
    p.add_argument("--fwd-bwd-lengths", default="", help="comma-separated lengths for the fwd+bwd table")
    p.add_argument("--fwd-bwd-batch", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd copy of ours")
    p.add_argument("--products", action="store_true",
                   help="after the training table, ours' matrix products' share of its step")
    add_memory_flags(p)
    add_thread_flags(p)
    args = p.parse_args()
    threads = apply_thread_flags(args)
    memory = apply_memory_flags(args)
    lengths = [int(x) for x in args.fwd_bwd_lengths.split(",") if x]
    torch.manual_seed(0)
    ours = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset, l_max=max([args.length + 2, 1026, *lengths])))
    ref = HyenaDNAForCausalLM(replace(ours.config, use_fast_path=False))
    ref.load_state_dict(ours.state_dict())
    official = OfficialLM.from_ours(ours)
    models = {"ours": ours, "official": official, "reference": ref}
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "ours": lambda x, y: ours(x, targets=y).loss,
        "official": official.loss,
        "reference": lambda x, y: ref(x, targets=y).loss}
    print(f"# machine: {machine()}; {threads}; {memory}; clock: {args.clock}")

    def batch(b: int, seq_len: int) -> tuple[Tensor, Tensor]:
        data = torch.randint(7, 11, (b, seq_len + 1))
        return data[:, :-1], data[:, 1:]

    def row(name: str, ts: list[float], t: dict[str, list[float]], *extra: str) -> str:
        best = min(ts)
        vs_off, vs_ref = min(t["official"]) / best, min(t["reference"]) / best
        return f"{name:>10} {best * 1e3:>10.1f} {' '.join(extra)} {vs_off:>11.2f}x {vs_ref:>12.2f}x {spread(ts):>6}"

    if not args.no_train:
        ids, targets = batch(args.batch, args.length)
        check_same(ours, {k: v for k, v in losses.items() if k != "ours"}, models, ids, targets)

        def train_step(name: str, model: nn.Module) -> Callable[[], None]:
            opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)

            def step() -> None:
                losses[name](ids, targets).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        steps = {name: train_step(name, m) for name, m in models.items()}
        compile_note = ""
        if args.compile:
            compiled = compile_model(copy.deepcopy(ours))
            start = time.perf_counter()
            compiled(ids, targets=targets).loss.backward()
            compile_note = f"; compiled: inductor, first call (compiles fwd + bwd) {time.perf_counter() - start:.1f} s"
            if not is_compiled(compiled):
                raise SystemExit("torch.compile fell back to eager (see the warning above): nothing to compare")
            models["compiled"] = compiled
            losses["compiled"] = lambda x, y: compiled(x, targets=y).loss
            steps["compiled"] = train_step("compiled", compiled)
        t = interleaved(steps, args.steps, alternate=True, clock=CLOCKS[args.clock])
        tokens = args.batch * args.length
        print(f"# {args.preset} training step (fwd + loss + bwd + AdamW), batch {args.batch} x {args.length}, fp32, "
              f"best of {args.steps} interleaved steps{compile_note}")
        print(f"{'impl':>10} {'step ms':>10} {'tokens/s':>9} {'vs official':>12} {'vs reference':>13} {'noise':>6}")
        for name, ts in t.items():
            print(row(name, ts, t, f"{tokens / min(ts):>9,.0f}"), flush=True)
        if args.products:
            share, step_s = product_share(steps["ours"], args.steps, CLOCKS[args.clock])
            ceiling = min(t["official"]) / (min(t["ours"]) * share / step_s)
            print(f"# ours' products (hyenadna.ops.gemm.matmul_nt): {share * 1e3:.1f} of {step_s * 1e3:.1f} ms per "
                  f"step ({share / step_s:.0%}); official step / that share of ours' best step = "
                  f"{ceiling:.2f}x, the ceiling if nothing else took time")

    if lengths:
        print(f"\n# {args.preset} forward + loss + backward of the whole model, batch {args.fwd_bwd_batch}, fp32, "
              f"best of interleaved repeats")
        print(f"{'L':>8} {'impl':>10} {'ms':>10} {'vs official':>12} {'vs reference':>13} {'noise':>6}")
        for seq_len in lengths:
            ids, targets = batch(args.fwd_bwd_batch, seq_len)

            def fwd_bwd(name: str) -> Callable[[], None]:
                def run() -> None:
                    losses[name](ids, targets).backward()
                    models[name].zero_grad(set_to_none=True)
                return run

            reps = max(2, args.steps * max(1, 4096 // seq_len)) if seq_len <= 16384 else max(2, args.steps // 3)
            t = interleaved({name: fwd_bwd(name) for name in ("ours", "official", "reference")}, reps,
                            alternate=True, clock=CLOCKS[args.clock])
            for name, ts in t.items():
                print(f"{seq_len:>8} " + row(name, ts, t), flush=True)


if __name__ == "__main__":
    main()
