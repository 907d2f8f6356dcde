"""Generation speed: cached incremental decoding vs re-running the full forward per token, same run.

    python benchmarks/bench_generate.py [--preset tiny-1k] [--prompt 512] [--new 256] [--device cpu] [--threads 1]

Random weights (speed does not depend on them); both paths sample the same tokens with the
same seed, which the script checks.
"""

from __future__ import annotations

import argparse
import time

import torch

from hyenadna.inference import generate
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.tokenizer import CharTokenizer


def main() -> None:
    """Print tokens/s of both paths and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-1k")
    parser.add_argument("--prompt", type=int, default=512, help="prompt length (bases)")
    parser.add_argument("--new", type=int, default=256, help="tokens to generate")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        # On a busy CPU, waking several threads for each tiny per-token op can cost milliseconds.
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset)).to(args.device).eval()
    tok = CharTokenizer()
    prompt = "".join("ACGT"[i] for i in torch.randint(4, (args.prompt,)).tolist())
    results = {}
    for use_cache in (True, False):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(model, tok, prompt, args.new, seed=1, num_samples=args.samples, use_cache=use_cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[use_cache] = (time.perf_counter() - start, out)
    same = results[True][1] == results[False][1]
    print(f"{args.preset} on {args.device} ({torch.get_num_threads()} threads): prompt {args.prompt}, {args.new} new tokens x {args.samples} samples")
    for use_cache, name in ((True, "cached"), (False, "full re-forward")):
        secs = results[use_cache][0]
        print(f"  {name:16s} {secs:7.2f} s  {args.new * args.samples / secs:9.1f} tokens/s")
    print(f"  speed-up {results[False][0] / results[True][0]:.1f}x; identical samples: {same}")


if __name__ == "__main__":
    main()
