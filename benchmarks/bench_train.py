"""Tiny-1k training throughput on CPU: our model vs a minimal implementation, same run.

    python benchmarks/bench_train.py [--preset tiny-1k] [--batch 8] [--length 1024] [--steps 10]

One training step = forward, mean token cross-entropy, backward, AdamW step, zero_grad; tokens/s
counts batch x length per step. `baseline` is the same model (a copy of the same weights) run
through the straightforward operator of bench_operator.py (module calls, layout transposes,
oneDNN depthwise conv, autograd through rfft/irfft at 2L): the minimal implementation the issue
compares against. The two alternate step by step (interleaved), best of --steps after one warm-up
step each; `noise` is how far the median step sat above the best.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from bench_operator import baseline_operator
from common import interleaved, machine, spread
from torch import Tensor

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM


def baseline_loss(model: HyenaDNAForCausalLM, ids: Tensor, targets: Tensor) -> Tensor:
    """Next-token loss of `model`'s weights through the straightforward Hyena operator."""
    bb = model.backbone
    residual = bb.embed_dropout(bb.embeddings(ids))
    for layer in bb.layers:
        residual = residual + layer.dropout(baseline_operator(layer.mixer, layer.norm1(residual)))
        residual = residual + layer.dropout(layer.mlp(layer.norm2(residual)))
    logits = model.lm_head(bb.ln_f(residual))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    """Print tokens/s of ours and of the baseline, and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-1k")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.manual_seed(0)
    ours = HyenaDNAForCausalLM(HyenaConfig.preset(args.preset, l_max=max(args.length, 1026)))
    base = copy.deepcopy(ours)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=6e-4, weight_decay=0.1)
    opt_base = torch.optim.AdamW(base.parameters(), lr=6e-4, weight_decay=0.1)
    data = torch.randint(7, 11, (args.batch, args.length + 1))
    ids, targets = data[:, :-1], data[:, 1:]
    with torch.no_grad():
        ours.eval(), base.eval()
        a, b = ours(ids, targets=targets).loss, baseline_loss(base, ids, targets)
        assert torch.allclose(a, b, rtol=1e-5), f"ours and baseline disagree: {a.item()} vs {b.item()}"
        ours.train(), base.train()

    def step_ours() -> None:
        ours(ids, targets=targets).loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_base() -> None:
        baseline_loss(base, ids, targets).backward()
        opt_base.step()
        opt_base.zero_grad(set_to_none=True)

    t = interleaved({"baseline": step_base, "ours": step_ours}, args.steps)
    tokens = args.batch * args.length
    print(f"# machine: {machine()}")
    print(f"# {args.preset} training step (fwd + loss + bwd + AdamW), batch {args.batch} x {args.length}, fp32, "
          f"best of {args.steps} interleaved steps")
    print(f"{'impl':>9} {'step ms':>8} {'tokens/s':>9} {'noise':>6}")
    for name in ("baseline", "ours"):
        best = min(t[name])
        print(f"{name:>9} {best * 1e3:>8.1f} {tokens / best:>9,.0f} {spread(t[name]):>6}")
    print(f"speed-up: {min(t['baseline']) / min(t['ours']):.2f}x")


if __name__ == "__main__":
    main()
