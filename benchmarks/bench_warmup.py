"""Sequence-length warmup vs training at the final length from the start, small scale on CPU.

    python benchmarks/bench_warmup.py [--target-len 16384] [--start-len 1024] [--stage-steps 8] [--steps 48]

Two runs of the same tiny model (2 x 128, same initial weights, same AdamW settings) see the same
number of tokens per optimizer step and the same number of steps, on windows of real DNA (the
committed chrX slice, data/human_chrX_8mb.fa.gz):
  final-length  every step is batch 1 x target length
  warmup        the stage table of hyenadna.warmup.build_stages (the pretraining callback's own
                schedule: doubling lengths from --start-len, --stage-steps steps each, the batch
                scaled up as windows shrink so tokens per step stay constant), then the target
The training loop is a plain PyTorch loop here (the callback itself needs a Lightning trainer
and datamodule); only the schedule is shared. The runs take turns step by step (interleaved). Printed: wall clock of each run, its tokens/s, and
the loss of both final models on the same held-out windows at the target length.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from common import add_memory_flags, apply_memory_flags, machine

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.tokenizer import CharTokenizer

FASTA = Path(__file__).resolve().parents[1] / "data" / "human_chrX_8mb.fa.gz"


def load_ids(path: Path) -> np.ndarray:
    """Token ids of every sequence in a (b)gzipped FASTA file, concatenated, N-runs kept."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: the committed chrX slice is missing (see data/README.md)")
    with gzip.open(path, "rt") as f:
        seq = "".join(line.strip() for line in f if not line.startswith(">"))
    return CharTokenizer().encode(seq)


def windows(ids: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """batch random windows of length + 1 tokens (inputs and shifted targets)."""
    starts = rng.integers(0, len(ids) - length - 1, size=batch)
    return torch.from_numpy(np.stack([ids[s:s + length + 1] for s in starts]).astype(np.int64))


def train(model: HyenaDNAForCausalLM, schedule: list[tuple[int, int]], ids: np.ndarray, seed: int) -> Iterator[float]:
    """One AdamW step per (length, batch) entry, yielding each step's wall clock in seconds (window
    sampling included), so that two runs can take turns."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    for length, batch in schedule:
        start = time.perf_counter()
        data = windows(ids, batch, length, rng)
        model(data[:, :-1], targets=data[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        yield time.perf_counter() - start


def main() -> None:
    """Print wall clock, tokens/s and held-out loss of both runs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target-len", type=int, default=16384)
    p.add_argument("--start-len", type=int, default=1024)
    p.add_argument("--stage-steps", type=int, default=8)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--eval-windows", type=int, default=4)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    ids = load_ids(FASTA)
    split = int(len(ids) * 0.9)
    train_ids, held_out = ids[:split], ids[split:]
    from hyenadna.warmup import build_stages  # imports Lightning, which allocates: after the memory flags

    stages = build_stages(args.target_len, 1, 1, "steps", start_len=args.start_len, stage_duration=args.stage_steps)
    warm: list[tuple[int, int]] = []
    for stage in stages:
        n = (stage.end if stage.end is not None else args.steps) - len(warm)
        warm += [(stage.seq_len, stage.batch_size * stage.accumulate)] * max(0, n)
    warm = warm[:args.steps]
    final = [(args.target_len, 1)] * args.steps
    assert sum(l * b for l, b in warm) == sum(l * b for l, b in final), "runs must see the same tokens"

    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset("tiny-1k", l_max=args.target_len))
    runs = {"final-length": copy.deepcopy(model), "warmup": copy.deepcopy(model)}
    schedules = {"final-length": final, "warmup": warm}
    eval_batch = windows(held_out, args.eval_windows, args.target_len, np.random.default_rng(123))
    print(f"# machine: {machine()}; {memory}")
    print(f"# tiny (2 x 128), {args.steps} AdamW steps of {args.target_len:,} tokens each; warmup stages "
          + ", ".join(f"{s.seq_len}x{s.batch_size}" for s in stages) + f" ({args.stage_steps} steps each, "
          f"last stage to the end); held-out loss on {args.eval_windows} windows of {args.target_len:,}")
    print(f"{'run':>13} {'tokens':>10} {'wall s':>8} {'tokens/s':>9} {'held-out loss':>14}")
    # First calls at a new shape pay one-off costs (allocator growth, MKL/oneDNN plans): pay them
    # for every shape on a scratch copy, so neither timed run carries them.
    sum(train(copy.deepcopy(model), sorted(set(warm + final)), train_ids, seed=0))
    # The two runs take turns step by step (each with its own optimizer and window sampler, so the
    # results are those of separate runs): slow spells of this shared VM, which at long L can
    # double the kernel's page-fault time for minutes, then hit both alike.
    steps = {name: train(m, schedules[name], train_ids, seed=1) for name, m in runs.items()}
    times = dict.fromkeys(runs, 0.0)
    for _ in range(args.steps):
        for name, run in steps.items():
            times[name] += next(run)
    for name, m in runs.items():
        with torch.no_grad():
            loss = m.eval()(eval_batch[:, :-1], targets=eval_batch[:, 1:]).loss.item()
        tokens = sum(l * b for l, b in schedules[name])
        print(f"{name:>13} {tokens:>10,} {times[name]:>8.1f} {tokens / times[name]:>9,.0f} {loss:>14.4f}", flush=True)
    print(f"warmup wall clock: {times['warmup'] / times['final-length'] - 1:+.0%} vs final length from the start")


if __name__ == "__main__":
    main()
