"""The block's MLP (fc1 -> tanh-GELU -> fc2) as one autograd node, and its reference.

    y = gelu_tanh(x W1^T + b1) W2^T + b2        x (..., D) -> (..., D), hidden width I

The same function as the modules through autograd, with four changes. The six products go
through `hyenadna.ops.gemm.matmul_nt` (oneDNN on CPU: about twice MKL's fp32 speed on AMD
processors, the same values to fp32 rounding). The (tokens, I) activation, the widest tensor of a
block (I = 4D; 32 MB per layer from 16k tokens on in the tiny model), comes from the kernels'
buffer pool (`hyenadna.ops.buffers`) instead of being mapped and faulted in afresh every step, as
do the other (tokens, I) tensors on the torch.mm route (oneDNN's linear allocates its outputs
itself). The GELU's gradient is computed in place over the hidden gradient. And on the oneDNN
route the GELU and its slope come from a sigmoid (`gelu_tanh_and_slope`): ATen's tanh-GELU
spends its time in a vectorised tanh, forward and again backward, while the sigmoid form makes
both in one forward pass and leaves backward a single multiply (10.7 against 6.7 ms over
8k x 512 values on a Zen 5 EPYC core, `python benchmarks/bench_gemm.py`); the slope is saved
instead of the pre-activation (the same memory).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hyenadna.ops import gemm
from hyenadna.ops.buffers import pooled_empty
from hyenadna.ops.common import GELU_SLICE_BYTES, MLP_CHUNK_BYTES


class MlpFn(torch.autograd.Function):
    """fc1 -> tanh-GELU -> fc2 with a hand-written backward, fp32, large buffers pooled. Saves x
    and the activation (what autograd saves for the modules) and, for the GELU's gradient, its
    slope at the pre-activation (oneDNN route) or the pre-activation itself (torch.mm route).

    On the oneDNN route the pre-activation and its gradient, which oneDNN allocates itself, are
    made in row chunks of at most `MLP_CHUNK_BYTES` (one chunk up to 8k tokens at I = 512): a
    32 MB or larger block would be mapped and faulted in afresh at every step. Each chunk of the
    pre-activation is spent on the activation and slope (pooled buffers) and dropped, so one
    chunk's heap block serves the next; the backward uses each gradient chunk and drops it. The
    weight gradients then sum the chunks' products, a different order of the same sum (fp32
    rounding).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:  # type: ignore[override]
        lead, d = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, d)
        tokens, inner = x2.shape[0], w1.shape[0]
        a = pooled_empty((tokens, inner), x.dtype, x.device)
        ctx.slope = gemm.onednn_active() and x.device.type == "cpu" and x.dtype == torch.float32
        if ctx.slope:
            rows = _rows_within(MLP_CHUNK_BYTES, inner * x.element_size())
            h = pooled_empty((tokens, inner), x.dtype, x.device)  # holds the slope
            for s in range(0, tokens, rows):
                gelu_tanh_and_slope(gemm.matmul_nt(x2[s:s + rows], w1, b1), a[s:s + rows], h[s:s + rows])
            y = gemm.matmul_nt(a, w2, b2)
        else:
            rows = tokens
            h = torch.addmm(b1, x2, w1.mT, out=pooled_empty((tokens, inner), x.dtype, x.device))
            torch._C._nn.gelu(h, approximate="tanh", out=a)
            y = torch.addmm(b2, a, w2.mT)
        ctx.rows = rows
        ctx.save_for_backward(x2, w1, w2, h, a)
        return y.view(*lead, w2.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x2, w1, w2, h, a = ctx.saved_tensors  # h: the GELU's slope on the oneDNN route, else its input
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        lead, rows = grad_y.shape[:-1], ctx.rows
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if need_w2:
            grad_w2 = gemm.matmul_tn(g, a)  # g^T a
        if need_b2:
            grad_b2 = g.sum(0)
        if need_x or need_w1 or need_b1:
            w2t, w1t = w2.mT.contiguous(), w1.mT.contiguous()
            tokens = g.shape[0]
            if need_x and rows < tokens:
                grad_x = pooled_empty(x2.shape, x2.dtype, x2.device)
            for s in range(0, tokens, rows):
                grad_h = gemm.matmul_nt(g[s:s + rows], w2t)  # the activation's gradient g W2
                if ctx.slope:
                    grad_h.mul_(h[s:s + rows])
                else:
                    torch.ops.aten.gelu_backward.grad_input(grad_h, h[s:s + rows], approximate="tanh",
                                                            grad_input=grad_h)
                if need_w1:  # grad_h^T x
                    part = gemm.matmul_tn(grad_h, x2[s:s + rows])
                    grad_w1 = part if grad_w1 is None else grad_w1.add_(part)
                if need_b1:
                    part = grad_h.sum(0)
                    grad_b1 = part if grad_b1 is None else grad_b1.add_(part)
                if need_x:  # grad_h W1
                    if grad_x is None:
                        grad_x = gemm.matmul_nt(grad_h, w1t)
                    else:
                        grad_x[s:s + rows] = gemm.matmul_nt(grad_h, w1t)
            if need_x:
                grad_x = grad_x.view(*lead, -1)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


# tanh-GELU's constants, as ATen's: gelu(x) = x/2 (1 + tanh(BETA (x + KAPPA x^3))).
_BETA = math.sqrt(2.0 / math.pi)
_KAPPA = 0.044715


def gelu_tanh_and_slope(h: Tensor, out: Tensor, slope: Tensor) -> None:
    """Write gelu_tanh(h) into `out` and its derivative at h into `slope` (all (rows, I)).

    With u = 2 BETA (h + KAPPA h^3), 1 + tanh(u / 2) = 2 sigmoid(u), so gelu(h) = h sigmoid(u)
    and gelu'(h) = s + h s (1 - s) u' with s = sigmoid(u), u' = 2 BETA (1 + 3 KAPPA h^2): seven
    elementwise passes of fast kernels instead of tanh twice (forward, backward), over row slices
    of at most `GELU_SLICE_BYTES` that stay in cache between passes. The same function to fp32
    rounding; h s (1 - s) is formed before the factor u', so as in ATen's backward only |h| past
    ~1e19 (where h^2 overflows) gives a NaN slope.
    """
    rows = _rows_within(GELU_SLICE_BYTES, h.shape[-1] * h.element_size())
    two_beta = torch.tensor(2 * _BETA, dtype=h.dtype, device=h.device)
    tmp = torch.empty((2, min(rows, h.shape[0]), h.shape[-1]), dtype=h.dtype, device=h.device)
    for r in range(0, h.shape[0], rows):
        x, a, d = h[r:r + rows], out[r:r + rows], slope[r:r + rows]
        t, du = tmp[0, :x.shape[0]], tmp[1, :x.shape[0]]
        torch.addcmul(two_beta, x, x, value=2 * _BETA * _KAPPA, out=d).mul_(x)  # u
        torch.sigmoid(d, out=d)  # s
        torch.ops.aten.sigmoid_backward.grad_input(x, d, grad_input=t)  # h s (1 - s)
        torch.addcmul(two_beta, x, x, value=6 * _BETA * _KAPPA, out=du)  # u'
        torch.mul(x, d, out=a)  # gelu = h s
        d.addcmul_(t, du)


def _rows_within(budget_bytes: int, row_bytes: int) -> int:
    """Rows of `row_bytes` each that fit in `budget_bytes` (at least 1)."""
    return max(1, budget_bytes // max(1, row_bytes))


def mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The MLP via `MlpFn`: x (..., D), w1 (I, D), b1 (I,), w2 (D, I), b2 (D,) -> (..., D); every
    tensor fp32 (the caller falls back to `mlp_ref` otherwise)."""
    return MlpFn.apply(x, w1, b1, w2, b2)


def mlp_ref(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The same MLP through plain autograd, as the modules compute it."""
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
