"""Tiny HyenaDNA forward on one 1M-token sequence on CPU: wall time and peak resident memory.

    python benchmarks/bench_long.py [--length 1048576] [--preset tiny-1k] [--repeats 2]

Runs under torch.inference_mode, where the model takes its inference path: the input projection,
the filter and the MLP run over slices of positions, the long convolution in channel chunks, so no
(B, 3D, L) unconvolved projection, (D, 2L) spectrum or (B, L, 4D) MLP activation is ever whole. Random weights (the
architecture of --preset with l_max raised to the length): timing and memory do not depend on them.
Peak RSS is the process's high-water mark (ru_maxrss), so it includes torch itself.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_memory_flags, apply_memory_flags, machine, peak_rss_gb

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM


def main() -> None:
    """Print time and peak memory of the forward pass."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1 << 20)
    p.add_argument("--preset", default="tiny-1k")
    p.add_argument("--repeats", type=int, default=2)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset, l_max=args.length)).eval()
    ids = torch.randint(7, 11, (1, args.length))  # A, C, G, T
    rss_model = peak_rss_gb()
    times = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            start = time.perf_counter()
            logits = model(ids).logits
            times.append(time.perf_counter() - start)
    assert torch.isfinite(logits).all()
    cached = model.backbone.layers[0].mixer.filter_fn._spectrum_cache is not None
    print(f"# machine: {machine()}; {memory}")
    print(f"# {args.preset} ({model.config.n_layer} x {model.config.d_model}), one sequence of "
          f"{args.length:,} tokens, fp32, torch.inference_mode; best of {args.repeats}; filter spectrum "
          + ("cached after the first run" if cached else "not cached at this size (above spectrum_cache_max_bytes)"))
    print(f"{'tokens':>10} {'first run s':>12} {'best s':>8} {'tokens/s':>10} {'peak RSS GB':>12} {'RSS before GB':>14}")
    print(f"{args.length:>10,} {times[0]:>12.2f} {min(times):>8.2f} {args.length / min(times):>10,.0f} "
          f"{peak_rss_gb():>12.2f} {rss_model:>14.2f}")


if __name__ == "__main__":
    main()
