"""Tokenizer throughput: vectorised CharTokenizer vs a per-character dict lookup, same run.

    python benchmarks/bench_tokenizer.py [--lengths 1000000 10000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from hyenadna.tokenizer import CharTokenizer


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print a table of encode/decode times and the speed-up over a Python loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    tok = CharTokenizer()
    vocab = dict(tok.token_to_id)

    def loop_encode(seq: str) -> np.ndarray:
        # How a list(text)-style tokenizer works (plus uppercasing, as our default does).
        return np.array([vocab[c] for c in seq.upper()], dtype=np.int64)

    rng = np.random.default_rng(0)
    header = f"{'length':>12} {'encode ms':>10} {'decode ms':>10} {'loop encode ms':>15}"
    print(f"{header} {'speed-up':>9}")
    for n in args.lengths:
        seq = "".join(rng.choice(list("ACGTacgtN"), size=n))
        ids = tok.encode(seq)
        assert (loop_encode(seq) == ids).all()
        enc = best_of(lambda: tok.encode(seq), args.repeats)
        dec = best_of(lambda: tok.decode(ids), args.repeats)
        loop = best_of(lambda: loop_encode(seq), 1)
        row = f"{n:>12,} {enc * 1e3:>10.2f} {dec * 1e3:>10.2f} {loop * 1e3:>15.1f}"
        print(f"{row} {loop / enc:>8.0f}x")


if __name__ == "__main__":
    main()
