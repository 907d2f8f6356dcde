"""HyenaDNA-large (8 x 256) training on one NVIDIA GPU: tokens/s, peak memory and MFU at 32k, 160k, 1M.

    python benchmarks/bench_gpu.py                         # about 2-4 minutes on an H100
    python benchmarks/bench_gpu.py --lengths 32768 --steps 2 --peak-tflops 989

Each length trains the 8 x 256 model (d_inner 1024) in bf16 autocast with gradient checkpointing
(each block recomputed in backward) and a fused AdamW step, on batch = max(1, --tokens // L)
sequences (about 1M tokens per step by default); one warm-up step, then --steps timed steps
(CUDA events around each; tokens/s from the median). Peak memory is
torch.cuda.max_memory_allocated over the timed steps.

FLOP model (forward, per token, per layer; D = 256, I = 1024, L = sequence length):
  dense       2 * (3D * D + D * D + 2 * D * I)              in_proj, out_proj, MLP  (= 24 D^2)
  long conv   3 real FFTs of n = fft_size(L) ~ 2L points at 2.5 n log2 n flops, per channel, per
              token: 3 * 2.5 * (n / L) * log2(n) * D, plus the spectrum product (6 flops per bin)
  short conv  2 * 3 * 3D                                      3 taps on 3D channels
  gating      2 * D                                           two elementwise gates
plus, per sequence, the filter MLP 2 (E F + 2 F^2 + F D) L (once per step, shared by the batch:
divided by B per token) and, per token, the tied LM head 2 D V. Model FLOPs of a training step
= 3 x forward (forward + backward); MFU divides them by the card's dense bf16 peak. HFU adds the
checkpoint recompute (4 x forward). The FFTs run in fp32 on CUDA cores, so MFU against the bf16
tensor-core peak is a strict yardstick.

Without CUDA it prints why and exits with status 2 (pass --allow-cpu to exercise the code path on
the CPU at toy lengths).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.ops import fft_size

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring, datasheet values.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10G": 125.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def forward_flops_per_token(cfg: HyenaConfig, seq_len: int, batch: int) -> float:
    """Forward FLOPs per token of the whole model at length `seq_len` (see the module docstring)."""
    d, inner, n = cfg.d_model, cfg.d_inner, fft_size(seq_len)
    assert inner is not None
    dense = 2 * (3 * d * d + d * d + 2 * d * inner)
    fft = (3 * 2.5 * n * math.log2(n) + 6 * (n // 2 + 1)) * d / seq_len
    short = 2 * cfg.short_filter_order * 3 * d
    gating = 2 * d
    filt = 2 * (cfg.emb_dim * cfg.filter_order + cfg.num_inner_mlps * cfg.filter_order ** 2
                + cfg.filter_order * d) / batch
    per_layer = dense + fft + short + gating + filt
    return cfg.n_layer * per_layer + 2 * d * cfg.padded_vocab_size


def peak_tflops(name: str, override: float | None) -> float | None:
    """The card's dense bf16 peak: --peak-tflops if given, else looked up by device name."""
    if override:
        return override
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    """Print one row per length: batch, step time, tokens/s, peak memory, MFU and HFU."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 160000, 1 << 20])
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens per step (batch = tokens // L)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, TFLOP/s")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU (code-path check at toy sizes)")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench_gpu.py needs an NVIDIA GPU with CUDA: torch.cuda.is_available() is False "
              f"(torch {torch.__version__}). Nothing was measured.", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = peak_tflops(name, args.peak_tflops)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"# device: {name}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 peak "
              f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
    print("# HyenaDNA 8 x 256 (d_inner 1024), bf16 autocast, gradient checkpointing, AdamW; "
          f"median of {args.steps} steps after 1 warm-up")
    print(f"{'L':>9} {'batch':>5} {'step s':>8} {'tokens/s':>11} {'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>6} {'HFU':>6}")
    for seq_len in args.lengths:
        batch = max(1, args.tokens // seq_len)
        cfg = HyenaConfig.preset("large-1m", l_max=max(seq_len, 2), gradient_checkpointing=True)
        torch.manual_seed(0)
        model = HyenaDNAForCausalLM(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1,
                                fused=device.type == "cuda")
        data = torch.randint(7, 11, (batch, seq_len + 1), device=device)
        ids, targets = data[:, :-1], data[:, 1:]

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(ids, targets=targets).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        try:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.steps):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    step()
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end) / 1e3)
                else:
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            print(f"{seq_len:>9} {batch:>5} {'out of memory':>30}")
            del model, opt
            torch.cuda.empty_cache()
            continue
        step_s = statistics.median(times)
        tokens_s = batch * seq_len / step_s
        flops = forward_flops_per_token(cfg, seq_len, batch) * tokens_s
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        mfu = f"{3 * flops / (peak * 1e12):.1%}" if peak else "-"
        hfu = f"{4 * flops / (peak * 1e12):.1%}" if peak else "-"
        print(f"{seq_len:>9} {batch:>5} {step_s:>8.3f} {tokens_s:>11,.0f} {mem:>9.1f} {3 * flops / 1e12:>8.1f} "
              f"{mfu:>6} {hfu:>6}", flush=True)
        del model, opt, data, ids, targets
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
