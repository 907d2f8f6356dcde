"""Checkpoint sizes and load times: a release-layout weights.ckpt vs our format, same model.

    python benchmarks/bench_checkpoint.py [--preset large-1m] [--layer-wrapped]

Writes (random-weight) checkpoints of the preset in a temporary directory: the original
release layout (Lightning-style dict, `model.` keys with z/t/deltas buffers, no optimizer
state) and ours (`save_pretrained`); prints file sizes and `load_pretrained` wall times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hyenadna.checkpoint import config_to_original, load_pretrained, save_pretrained, to_official_state_dict
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM


def timed_load(path: Path) -> tuple[float, HyenaDNAForCausalLM]:
    """Wall time of one load_pretrained call, and the model."""
    start = time.perf_counter()
    model = load_pretrained(path)
    return time.perf_counter() - start, model


def main() -> None:
    """Print a size/time table for the two layouts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="large-1m")
    parser.add_argument("--layer-wrapped", action="store_true", help="release keys with '.layer' (grad-ckpt sizes)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        release, ours = Path(tmp) / "release", Path(tmp) / "ours"
        release.mkdir()
        torch.save({"state_dict": to_official_state_dict(model, args.layer_wrapped)}, release / "weights.ckpt")
        (release / "config.json").write_text(json.dumps(config_to_original(model.config, args.layer_wrapped)))
        save_pretrained(model, ours)
        ids = torch.randint(7, 11, (1, 2048))
        with torch.no_grad():
            ref = model(ids).logits
        print(f"{args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters")
        for name, path, weights in (("release weights.ckpt", release, release / "weights.ckpt"),
                                    ("ours model.safetensors", ours, ours / "model.safetensors")):
            secs, loaded = timed_load(path)
            with torch.no_grad():
                same = torch.equal(loaded(ids).logits, ref)
            print(f"  {name:24s} {weights.stat().st_size / 1e6:8.1f} MB   load {secs:6.2f} s   identical logits: {same}")


if __name__ == "__main__":
    main()
