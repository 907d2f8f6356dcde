"""fp32 GEMM on CPU: PyTorch's default route (torch.mm -> MKL) vs oneDNN (hyenadna.ops.gemm), one thread.

    python benchmarks/bench_gemm.py [--tokens 8192] [--repeats 10]

The shapes of the tiny model's products at --tokens positions (D = 128, I = 512, in_proj 3D), as
hyenadna.ops.gemm.matmul_nt computes them (a @ b^T, b^T and the weight-gradient operands as
transposed views); two weight gradients through matmul_tn and with its operands the other way
round (fc1's, and the in_proj's for one 1024-long sequence of the channels-first gradient), plus
a square 2048 product; best of --repeats, interleaved, CPU time. Then the MLP's tanh-GELU over
(--tokens, 512) values, forward and backward: ATen's kernels against the sigmoid form of
hyenadna.ops.mlp (`gelu_tanh_and_slope`, then one multiply in backward).
"""

from __future__ import annotations

import argparse

import torch
from common import CLOCKS, interleaved, machine

from hyenadna.ops import gemm
from hyenadna.ops.mlp import gelu_tanh_and_slope


def main() -> None:
    """Print GFLOP/s of both routes per shape and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    if not gemm.onednn_available():
        raise SystemExit("this PyTorch has no oneDNN linear kernel: nothing to compare")
    n = args.tokens
    r = torch.randn
    shapes = {  # name: (a, b) with the product a @ b^T
        "square 2048": (r(2048, 2048), r(2048, 2048)),
        "fc1 forward (N,128)x(128,512)": (r(n, 128), r(512, 128)),
        "fc2 forward (N,512)x(512,128)": (r(n, 512), r(128, 512)),
        "in_proj (384,128)x(128,N)": (r(384, 128), r(n, 128)),
        "fc2 weight grad (128,N)x(N,512), views": (r(n, 128).mT, r(n, 512).mT),
    }
    # fc1's weight gradient as matmul_tn computes it (both operands row-major: the narrower one's
    # transpose is the cheaper copy, so it goes first), and the other order, which matmul_tn avoids
    grad_h, x = r(n, 512), r(n, 128)
    products = {name: (lambda a=a, b=b: gemm.matmul_nt(a, b), 2 * a.shape[0] * a.shape[1] * b.shape[0])
                for name, (a, b) in shapes.items()}
    products["fc1 weight grad (512,N)x(N,128), matmul_tn"] = (lambda: gemm.matmul_tn(grad_h, x), 2 * n * 512 * 128)
    products["the same, wider operand first"] = (lambda: gemm.matmul_nt(grad_h.mT, x.mT), 2 * n * 512 * 128)
    # the in_proj's weight gradient for one sequence: the gradient channels first (384, L), so
    # matmul_tn's a^T is row-major already, and the other order copies x^T
    grad_u, x_seq = r(384, 1024), r(1024, 128)
    products["in_proj wgrad, 1 seq (384,L)x(L,128), matmul_tn"] = (lambda: gemm.matmul_tn(grad_u.mT, x_seq),
                                                                  2 * 1024 * 384 * 128)
    products["the same, the other order"] = (lambda: gemm.matmul_nt(x_seq.mT, grad_u).mT.contiguous(),
                                             2 * 1024 * 384 * 128)
    print(f"# machine: {machine()}; clock: cpu")
    print(f"{'product':>48} {'torch.mm GF/s':>14} {'oneDNN GF/s':>12} {'ratio':>6}")
    for name, (product, flops) in products.items():
        def route(on: bool, product=product):  # type: ignore[no-untyped-def]
            def run() -> None:
                gemm.use_onednn = on
                product()
            return run

        t = interleaved({"mm": route(False), "dnn": route(True)}, args.repeats, clock=CLOCKS["cpu"])
        mm, dnn = flops / min(t["mm"]) / 1e9, flops / min(t["dnn"]) / 1e9
        print(f"{name:>48} {mm:>14.1f} {dnn:>12.1f} {dnn / mm:>5.2f}x", flush=True)
    gemm.use_onednn = gemm.onednn_available()

    h, g = r(n, 512), r(n, 512)
    a, slope, grad = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)

    def aten() -> None:
        torch._C._nn.gelu(h, approximate="tanh", out=a)
        torch.ops.aten.gelu_backward.grad_input(g, h, approximate="tanh", grad_input=grad)

    def sigmoid_form() -> None:
        gelu_tanh_and_slope(h, a, slope)
        torch.mul(g, slope, out=grad)

    t = interleaved({"aten": aten, "ours": sigmoid_form}, args.repeats, clock=CLOCKS["cpu"])
    print(f"\n# tanh-GELU forward + backward over ({n}, 512) fp32 values")
    print(f"{'ATen gelu + gelu_backward ms':>32} {min(t['aten']) * 1e3:>8.2f}")
    print(f"{'gelu_tanh_and_slope + mul ms':>32} {min(t['ours']) * 1e3:>8.2f}   "
          f"{min(t['aten']) / min(t['ours']):.2f}x")


if __name__ == "__main__":
    main()
