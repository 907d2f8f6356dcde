"""Peak memory and time of a long-sequence training step of the tiny LM on CPU, per memory option.

    python benchmarks/bench_memory.py [--tokens 1048576] [--steps 2] [--options default no-reuse checkpoint split4 accum2]
    python benchmarks/bench_memory.py --tokens 1048576 --options accum8 checkpoint+accum4   # a 1M step in ~6 GB

Each option runs in a fresh subprocess (so that peak resident memory, getrusage ru_maxrss, is its
own): the tiny LM (2 x 128, l_max = the sequence length), --steps training steps of --tokens
tokens each (forward, loss, backward, AdamW), fp32; `step s` is the last step's wall time (the
first pays for first-touch page faults of every buffer), `peak RSS` the process's peak.

Options (every one computes the same loss per token; they trade memory for time):
  default     one sequence of --tokens, the kernels' large buffers reused across steps (cpu_reuse_buffers)
  no-reuse    the same with buffers allocated fresh each step (cpu_reuse_buffers: false)
  checkpoint  gradient_checkpointing: each block recomputed in backward (model.gradient_checkpointing)
  split4      4 sequences of --tokens / 4 per step (shorter windows, same tokens)
  accumN      one sequence of --tokens / N, N micro-steps accumulated per optimizer step (accum2, accum8, ...)
  keep-freed  default plus glibc keeping freed memory (cpu_keep_freed_memory)
  a+b         several at once, e.g. checkpoint+accum4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

OPTIONS = ("default", "no-reuse", "checkpoint", "split4", "accum2", "keep-freed")


def parse_option(option: str) -> tuple[set[str], int, int]:
    """(switches, batch, micro-steps) of an option such as `checkpoint+accum4`; ValueError if unknown."""
    parts, batch, micro = set(option.split("+")), 1, 1
    for part in parts:
        if part.startswith("accum") and part[5:].isdigit() and int(part[5:]) >= 1:
            micro = int(part[5:])
        elif part == "split4":
            batch = 4
        elif part not in ("default", "no-reuse", "checkpoint", "keep-freed"):
            raise ValueError(f"unknown option {part!r} in {option!r} (known: {', '.join(OPTIONS)}, accumN, a+b)")
    return parts, batch, micro


def option_arg(option: str) -> str:
    """argparse type: an option name that `parse_option` accepts."""
    try:
        parse_option(option)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return option


def child(option: str, tokens: int, steps: int) -> dict[str, float]:
    """One option's run in this process; returns its figures."""
    import torch
    from common import peak_rss_gb

    from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
    from hyenadna.ops.buffers import buffer_pool
    from hyenadna.runtime import keep_freed_memory, use_huge_pages

    use_huge_pages(True)
    parts, batch, micro = parse_option(option)
    if "keep-freed" in parts and (why := keep_freed_memory()):
        raise SystemExit(why)
    buffer_pool.enable("no-reuse" not in parts)
    seq_len = tokens // (batch * micro)
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset("tiny-1k", l_max=seq_len + 2,
                                                   gradient_checkpointing="checkpoint" in parts))
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    data = torch.randint(7, 11, (micro, batch, seq_len + 1))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for m in range(micro):
            (model(data[m, :, :-1], targets=data[m, :, 1:]).loss / micro).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_s": times[-1], "first_s": times[0], "peak_gb": peak_rss_gb(), "batch": batch, "micro": micro,
            "seq_len": seq_len}


def main() -> None:
    """Run each option in its own subprocess and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1 << 20)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--options", nargs="+", default=list(OPTIONS[:5]), type=option_arg,
                   help=f"{', '.join(OPTIONS)}, accumN, or several joined by + (default: the first five)")
    p.add_argument("--child", type=option_arg, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.steps)))
        return
    import torch
    from common import machine

    print(f"# machine: {machine()}")
    print(f"# tiny LM (2 x 128) training step of {args.tokens:,} tokens, fp32, AdamW; each option in its own "
          f"process; step s = the last of {args.steps} steps")
    print(f"{'option':>17} {'batch x L':>16} {'micro':>6} {'step s':>8} {'first s':>8} {'peak RSS GB':>12}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    for option in args.options:
        out = subprocess.run([sys.executable, __file__, "--child", option, "--tokens", str(args.tokens),
                              "--steps", str(args.steps)], capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{option:>17} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        shape = f"{r['batch']} x {r['seq_len']:,}"
        print(f"{option:>17} {shape:>16} {r['micro']:>6} {r['step_s']:>8.2f} {r['first_s']:>8.2f} {r['peak_gb']:>12.2f}",
              flush=True)
    del torch


if __name__ == "__main__":
    main()
