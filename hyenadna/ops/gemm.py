"""fp32 matrix products on CPU through oneDNN where this PyTorch has it, else through torch.mm.

PyTorch sends fp32 `mm`/`addmm`/`bmm` on CPU to its BLAS (MKL in the official wheels), and MKL
picks its kernels by CPU vendor: on AMD processors it runs its AVX2 code even where the core has
full-width AVX-512. oneDNN, also in every x86 wheel (`torch.ops.mkldnn._linear_pointwise`, the
kernel inductor uses for frozen Linear layers), dispatches on the instruction set itself. It
computes the same IEEE fp32 products (no reduced-precision math mode is set); only the blocking of
the sums differs, so results agree with MKL's to fp32 rounding. On the AMD EPYC of
benchmarks/README.md it is about twice as fast at one thread (216 vs 96 GFLOP/s on a 2048^2
product; `python benchmarks/bench_gemm.py`).

`matmul_nt(a, b, bias)` = a @ b^T (+ bias), the one form oneDNN's linear takes; a and b may be
transposed views. `use_onednn` switches the route for the whole process (A/B comparisons, tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
use_onednn = _LINEAR is not None


def onednn_available() -> bool:
    """True where this PyTorch build has oneDNN's linear kernel (x86 and most ARM CPU builds)."""
    return _LINEAR is not None


def onednn_active() -> bool:
    """`use_onednn`, except while torch.compile traces (inductor picks its own GEMMs and cannot
    lower this kernel on strided operands)."""
    return use_onednn and not torch.compiler.is_compiling()


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a (M, K) @ b (N, K)^T + bias (N,) -> a new (M, N) tensor. fp32 CPU operands go through
    oneDNN when `use_onednn`; anything else (other dtypes and devices) through torch.mm/addmm."""
    if (onednn_active() and a.device.type == "cpu" and a.dtype == b.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32) and a.dim() == b.dim() == 2):
        return _LINEAR(a, b, bias, "none", [], "")
    return torch.mm(a, b.mT) if bias is None else torch.addmm(bias, a, b.mT)


# The products that contract over the rows of both operands (weight gradients, sum over tokens):
# oneDNN's linear needs its first operand's rows contiguous and copies it transposed; torch.mm
# reads both transposed in place. Which is faster depends on the CPU (see matmul_tn).
onednn_for_tn = True


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """a (K, M)^T @ b (K, N) -> a new contiguous (M, N): the weight-gradient form (K: the tokens).
    Through oneDNN when `onednn_active() and onednn_for_tn`, else torch.mm.

    oneDNN's linear copies its first operand row-major with ATen's strided copy (unless it
    already is) and reorders the second inside its own kernel, which is cheaper. So of its two
    orders, a^T (b^T)^T, or b^T (a^T)^T transposed afterwards (an M x N copy), it takes the one
    that copies fewer values (`_copied`): fc1's weight gradient at 8k tokens 79 vs 60 GF/s
    the other way round on a Zen 4 EPYC; the in_proj's for one sequence, whose a^T is the
    channels-first gradient itself, 204 vs 169 on a Zen 5 (`python benchmarks/bench_gemm.py`)."""
    if onednn_for_tn and onednn_active():
        if _copied(a) > _copied(b) + a.shape[1] * b.shape[1]:
            return matmul_nt(b.mT, a.mT).mT.contiguous()
        return matmul_nt(a.mT, b.mT)
    return torch.mm(a.mT, b)


def _copied(t: Tensor) -> int:
    """Values oneDNN copies to take t^T as its first operand: none if t^T is row-major already."""
    return 0 if t.mT.is_contiguous() else t.numel()
