"""A/B of the Hyena operator: this tree's hyenadna/model.py against the one at a git revision, same run.

    python benchmarks/ab_operator.py --against HEAD~1 [--lengths 1024 2048 4096] [--batch 1] [--repeats 30]

For a change to the operator, the interleaved in-process comparison is the figure to trust on a
shared machine: separate benchmark runs of the same build move by 10% or more from run to run on
this VM. The other revision's model.py is loaded as its own module (`git show REV:hyenadna/model.py`);
both operators get the same weights (same seed), and the straightforward baseline of
bench_operator.py runs on the old one's parameters. Before timing, outputs and all gradients of
the two revisions are compared and the largest relative difference printed. Times are best of
--repeats fwd+bwd (D=128), interleaved base, old, new, base, old, new, ...
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from bench_operator import baseline_operator, fwd_bwd
from common import add_memory_flags, apply_memory_flags, build_operator, interleaved, machine, spread
from torch import nn


REPO = Path(__file__).resolve().parents[1]


def load_model_at(rev: str, workdir: Path) -> ModuleType:
    """hyenadna/model.py as of git revision `rev`, imported as a separate module."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:hyenadna/model.py"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--against {rev}: git could not show hyenadna/model.py there ({e.stderr.strip()})") from e
    path = workdir / "model_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("model_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_at_rev"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def max_rel_diff(old: nn.Module, new: nn.Module, u: torch.Tensor, g: torch.Tensor) -> float:
    """Largest relative difference between the two operators' outputs, input and parameter gradients."""
    diffs = []
    results = []
    for op in (old, new):
        u.grad = None
        op.zero_grad(set_to_none=True)
        y = op(u)
        y.backward(g)
        results.append([y.detach(), u.grad.clone()] + [p.grad for p in op.parameters()])
    for a, b in zip(*results):
        if a is not None and b is not None:
            diffs.append(((a - b).norm() / a.norm().clamp_min(1e-30)).item())
    u.grad = None
    old.zero_grad(set_to_none=True)
    new.zero_grad(set_to_none=True)
    return max(diffs)


def main() -> None:
    """Print, per length, best times of the baseline, the old and the new operator and their ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="git revision whose hyenadna/model.py is the 'old' side")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    with tempfile.TemporaryDirectory() as tmp:
        old_model = load_model_at(args.against, Path(tmp))
    print(f"# machine: {machine()}; {memory}")
    print(f"# operator fwd+bwd, D={args.d_model}, batch {args.batch}, fp32: old = {args.against}, new = this tree; "
          f"best of {args.repeats} (interleaved)")
    print(f"{'L':>8} {'base ms':>9} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'base/new':>9} {'base/old':>9} "
          f"{'max rel diff':>13} {'noise':>6}")
    for seqlen in args.lengths:
        old, new = build_operator(args.d_model, seqlen, old_model), build_operator(args.d_model, seqlen)
        u = torch.randn(args.batch, seqlen, args.d_model, requires_grad=True)
        g = torch.randn(args.batch, seqlen, args.d_model)
        diff = max_rel_diff(old, new, u, g)
        t = interleaved({"base": fwd_bwd(lambda x, op=old: baseline_operator(op, x), old, u, g),
                         "old": fwd_bwd(old, old, u, g), "new": fwd_bwd(new, new, u, g)}, args.repeats)
        base, o, n = min(t["base"]), min(t["old"]), min(t["new"])
        print(f"{seqlen:>8} {base * 1e3:>9.2f} {o * 1e3:>8.2f} {n * 1e3:>8.2f} {n / o:>8.3f} {base / n:>8.2f}x "
              f"{base / o:>8.2f}x {diff:>13.1e} {spread(t['new']):>6}", flush=True)


if __name__ == "__main__":
    main()
