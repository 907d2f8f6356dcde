"""Data-loader throughput vs tiny-model training throughput at 1k, same run (loader must not bottleneck).

    python benchmarks/bench_loader.py [--workers 2] [--seq-len 1024] [--batch-size 8]

Loader: tokens/s delivered by ``PretrainDataModule.train_dataloader()`` on the shipped human
chrX slice (random windows, RC augmentation on, ``--workers`` worker processes), after the
first batch (worker start-up) is excluded. Model: tokens/s of forward + backward + AdamW step
of the tiny-1k model on CPU at the same batch shape. The two are timed one after the other,
so each has the machine to itself; the ratio says how many times faster the loader can feed
than the model can eat (target >= 10x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.pretrain_data import PretrainDataModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402 (benchmarks/ is not a package)

DATA = Path(__file__).resolve().parent.parent / "data"


def loader_tokens_per_s(seq_len: int, batch_size: int, workers: int, batches: int) -> float:
    """Tokens/s the train loader delivers, first batch excluded."""
    dm = PretrainDataModule(
        [{"name": "human", "fasta": str(DATA / "human_chrX_8mb.fa.gz"),
          "bed": str(DATA / "human_chrX_small.bed")}],
        max_length=seq_len,
        batch_size=batch_size,
        num_workers=workers,
        train_samples_per_epoch=(batches + 1) * batch_size,
    )
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    next(iterator)  # workers start and fill their prefetch queues here
    start = time.perf_counter()
    tokens = sum(batch["input_ids"].numel() for batch in iterator)
    return tokens / (time.perf_counter() - start)


def model_tokens_per_s(seq_len: int, batch_size: int, steps: int) -> float:
    """Tokens/s of tiny-1k training steps (forward, backward, AdamW) on CPU."""
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset("tiny-1k"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
    input_ids = torch.randint(7, 11, (batch_size, seq_len))
    targets = torch.randint(7, 11, (batch_size, seq_len))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids, targets=targets).loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator and FFT plans
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * seq_len / (time.perf_counter() - start)


def main() -> None:
    """Print loader and model throughput and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=300, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    args = parser.parse_args()

    print(machine())
    loader = loader_tokens_per_s(args.seq_len, args.batch_size, args.workers, args.batches)
    model = model_tokens_per_s(args.seq_len, args.batch_size, args.steps)
    print(f"loader ({args.workers} workers, {args.batch_size}x{args.seq_len}): {loader:14,.0f} tokens/s")
    print(f"tiny-1k training step (CPU, same shape): {model:14,.0f} tokens/s")
    print(f"ratio loader / model: {loader / model:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
