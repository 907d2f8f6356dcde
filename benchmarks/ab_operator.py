"""A/B of the Hyena operator: this tree against another git revision, same process, same weights.

    PYTHONPATH=. python benchmarks/ab_operator.py --against HEAD~1 [--lengths 1024 2048 4096] [--batch 1] [--repeats 30]

For a change to the operator, the interleaved in-process comparison is the figure to trust on a
shared machine: separate benchmark runs of the same build move by 10% or more from run to run.
The other revision's whole `hyenadna/` package is extracted (`git archive`) and imported as a
package of its own, `hyenadna_at_rev` (its imports of `hyenadna` renamed), so any layout works:
the old single-file model.py as well as model.py over hyenadna/ops. Both operators are built
with the same seed, so they hold the same weights (checked). Before timing, outputs and all
gradients of the two revisions are compared and the largest relative difference printed (0 for
a change that moves code without changing the arithmetic). `base` is this tree's operator on its
plain references (`HyenaOperator.forward_ref`). Times are best of --repeats fwd+bwd (D=128):
old and new interleaved in alternating order (old, new, new, old, ...), then the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from bench_operator import fwd_bwd
from common import add_memory_flags, apply_memory_flags, build_operator, interleaved, machine, spread
from torch import nn

from hyenadna.ops.buffers import buffer_pool


REPO = Path(__file__).resolve().parents[1]


def load_revision(rev: str, workdir: Path) -> ModuleType:
    """The `hyenadna` package as of git revision `rev`, imported as `hyenadna_at_rev`."""
    try:
        tar = subprocess.run(["git", "archive", rev, "hyenadna"], cwd=REPO, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--against {rev}: git could not archive hyenadna/ there ({e.stderr.decode().strip()})") from e
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(workdir, filter="data")
    package = workdir / "hyenadna_at_rev"
    (workdir / "hyenadna").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"(?m)^(\s*)(from|import) hyenadna\b", r"\1\2 hyenadna_at_rev", path.read_text()))
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module("hyenadna_at_rev")
    finally:
        sys.path.remove(str(workdir))


def build_operator_at(package: ModuleType, d: int, l_max: int) -> nn.Module:
    """`common.build_operator` for another revision: from_config where it exists, else the older
    signature with the filter settings as keyword arguments."""
    model = importlib.import_module(f"{package.__name__}.model")
    cfg = model.HyenaConfig(d_model=d, l_max=l_max)
    torch.manual_seed(0)
    if hasattr(model.HyenaOperator, "from_config"):
        return model.HyenaOperator.from_config(cfg)
    return model.HyenaOperator(d, l_max, emb_dim=cfg.emb_dim, filter_order=cfg.filter_order,
                               num_inner_mlps=cfg.num_inner_mlps, activation_freq=cfg.activation_freq,
                               train_freq=cfg.train_freq, modulate=cfg.modulate, fast_decay_pct=cfg.fast_decay_pct,
                               slow_decay_pct=cfg.slow_decay_pct, decay_target=cfg.decay_target, shift=cfg.shift)


def buffer_pool_at(package: ModuleType) -> object:
    """The other revision's buffer pool (ops.buffers.buffer_pool, formerly runtime.buffers)."""
    try:
        return importlib.import_module(f"{package.__name__}.ops.buffers").buffer_pool
    except ModuleNotFoundError:
        return importlib.import_module(f"{package.__name__}.runtime").buffers


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
    p.add_argument("--against", required=True, help="git revision whose hyenadna/ package is the 'old' side")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    with tempfile.TemporaryDirectory() as tmp:
        old_package = load_revision(args.against, Path(tmp))
        buffer_pool_at(old_package).enable(buffer_pool.enabled)  # both revisions with the same memory settings
    print(f"# machine: {machine()}; {memory}")
    print(f"# operator fwd+bwd, D={args.d_model}, batch {args.batch}, fp32: old = {args.against}, new = this tree; "
          f"best of {args.repeats} (old and new interleaved in alternating order, then base)")
    print(f"{'L':>8} {'base ms':>9} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'base/new':>9} {'base/old':>9} "
          f"{'max rel diff':>13} {'noise':>6}")
    for seq_len in args.lengths:
        old, new = build_operator_at(old_package, args.d_model, seq_len), build_operator(args.d_model, seq_len)
        if not all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values())):
            raise SystemExit("the two revisions' operators do not start from the same weights")
        u = torch.randn(args.batch, seq_len, args.d_model, requires_grad=True)
        g = torch.randn(args.batch, seq_len, args.d_model)
        diff = max_rel_diff(old, new, u, g)
        # old and new in turns, in alternating order; the baseline after them, on its own (whatever
        # runs right after its memory-heavy autograd FFTs is slower, which would bias old/new).
        t = interleaved({"old": fwd_bwd(old, old, u, g), "new": fwd_bwd(new, new, u, g)}, args.repeats,
                        alternate=True)
        t |= interleaved({"base": fwd_bwd(new.forward_ref, new, u, g)}, args.repeats)
        base, o, n = min(t["base"]), min(t["old"]), min(t["new"])
        print(f"{seq_len:>8} {base * 1e3:>9.2f} {o * 1e3:>8.2f} {n * 1e3:>8.2f} {n / o:>8.3f} {base / n:>8.2f}x "
              f"{base / o:>8.2f}x {diff:>13.1e} {spread(t['new']):>6}", flush=True)


if __name__ == "__main__":
    main()
