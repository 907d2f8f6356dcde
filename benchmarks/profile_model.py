"""Where time and memory go: torch.profiler per-op tables for the tiny and large shapes on CPU.

    python benchmarks/profile_model.py                                   # the default grid below
    python benchmarks/profile_model.py --shapes tiny --lengths 1024 16384 --modes fwdbwd --rows 15

For each shape (tiny 2 x 128, large 8 x 256), length and mode it prints the top ops by self CPU
time with their self memory, then a one-line split into categories (GEMM, FFT, elementwise,
copies, ...). `fwd` runs under torch.inference_mode (the inference path: cached filter spectrum,
chunked conv and MLP); `fwdbwd` is a training step's forward + loss + backward. Each profiled
step follows one unprofiled warm-up step. Batch = max(1, 8192 // L), so short lengths see a
training-like batch. Combinations slower than a few minutes on 2 CPU cores are skipped by default
(--max-fwdbwd, --max-large, --max-large-fwdbwd): the skips are printed.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from common import add_memory_flags, apply_memory_flags, machine
from torch.profiler import ProfilerActivity, profile

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM

SHAPES = {"tiny": dict(d_model=128, n_layer=2, d_inner=512), "large": dict(d_model=256, n_layer=8, d_inner=1024)}
CATEGORIES = {
    "GEMM": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "mkldnn::_linear_pointwise"),
    "FFT": ("aten::_fft_r2c", "aten::_fft_c2r", "aten::_fft_c2c"),
    "copy/fill": ("aten::copy_", "aten::fill_", "aten::zero_", "aten::cat", "aten::stack", "aten::clone"),
    "layernorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "activations": ("aten::gelu", "aten::gelu_backward", "aten::sin", "aten::cos", "aten::exp"),
    "elementwise": ("aten::mul", "aten::add", "aten::add_", "aten::addcmul", "aten::addcmul_", "aten::sum",
                    "aten::sub", "aten::div", "aten::neg", "aten::conj_physical", "aten::mul_"),
}


def categorize(prof: profile) -> str:
    """Self CPU time per category, as 'GEMM 41% | FFT 22% | ...'."""
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        cat = next((c for c, names in CATEGORIES.items() if evt.key in names), "other")
        totals[cat] += evt.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return " | ".join(f"{c} {v / whole:.0%}" for c, v in sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    """Print one profile table per (shape, length, mode)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["tiny", "large"], choices=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[1 << 10, 1 << 14, 1 << 18, 1 << 20])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--max-fwdbwd", type=int, default=1 << 18, help="longest L profiled with backward")
    p.add_argument("--max-large", type=int, default=1 << 18, help="longest L profiled for the large shape")
    p.add_argument("--max-large-fwdbwd", type=int, default=1 << 14, help="longest L for large with backward")
    p.add_argument("--rows", type=int, default=12)
    add_memory_flags(p)
    args = p.parse_args()
    memory = apply_memory_flags(args)
    print(f"# machine: {machine()}; {memory}")
    for shape in args.shapes:
        for seq_len in args.lengths:
            for mode in args.modes:
                label = f"{shape} ({SHAPES[shape]['n_layer']} x {SHAPES[shape]['d_model']}), L={seq_len:,}, {mode}"
                too_long = ((mode == "fwdbwd" and seq_len > args.max_fwdbwd)
                            or (shape == "large" and seq_len > args.max_large)
                            or (shape == "large" and mode == "fwdbwd" and seq_len > args.max_large_fwdbwd))
                if too_long:
                    print(f"\n## {label}: skipped (too slow on this CPU; raise --max-fwdbwd / --max-large / --max-large-fwdbwd)")
                    continue
                torch.manual_seed(0)
                model = HyenaDNAForCausalLM(HyenaConfig(**SHAPES[shape], l_max=seq_len + 1))
                batch = max(1, 8192 // seq_len)
                data = torch.randint(7, 11, (batch, seq_len + 1))
                ids, targets = data[:, :-1], data[:, 1:]

                def step() -> None:
                    if mode == "fwd":
                        with torch.inference_mode():
                            model.eval()(ids)
                    else:
                        model.train()(ids, targets=targets).loss.backward()
                        model.zero_grad(set_to_none=True)

                step()
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    step()
                total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
                print(f"\n## {label}, batch {batch}: {total:.2f} s self CPU time")
                print(f"   {categorize(prof)}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                max_name_column_width=32))


if __name__ == "__main__":
    main()
