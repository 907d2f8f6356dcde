"""The block's MLP (fc1 -> tanh-GELU -> fc2) as one autograd node, and its reference.

    y = gelu_tanh(x W1^T + b1) W2^T + b2        x (..., D) -> (..., D), hidden width I

The same products and GELU kernels as the modules through autograd, with three changes. The six
products go through `hyenadna.ops.gemm.matmul_nt` (oneDNN on CPU: about twice MKL's fp32 speed on
AMD processors, the same values to fp32 rounding). The (tokens, I) activation, the widest tensor
of a block (I = 4D; 32 MB per layer from 16k tokens on in the tiny model), comes from the kernels'
buffer pool (`hyenadna.ops.buffers`) instead of being mapped and faulted in afresh every step, as
do the other (tokens, I) tensors on the torch.mm route (oneDNN's linear allocates its outputs
itself). And the GELU's gradient is computed in place over the hidden gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hyenadna.ops import gemm
from hyenadna.ops.buffers import pooled_empty
from hyenadna.ops.common import MLP_CHUNK_BYTES


class MlpFn(torch.autograd.Function):
    """fc1 -> tanh-GELU -> fc2 with a hand-written backward, fp32, large buffers pooled. Saves x,
    the pre-activation and the activation (what autograd saves for the modules).

    On the oneDNN route the pre-activation and its gradient, which oneDNN allocates itself, are
    made in row chunks of at most `MLP_CHUNK_BYTES` (one chunk up to 8k tokens at I = 512): a
    32 MB or larger block would be mapped and faulted in afresh at every step. The forward copies
    each chunk into one pooled (tokens, I) buffer, so one chunk's heap block serves the next and
    the heap does not grow by the whole pre-activation; the backward uses each gradient chunk
    and drops it. The weight gradients then sum the chunks' products, a different order of the
    same sum (fp32 rounding).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:  # type: ignore[override]
        lead, d = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, d)
        tokens, inner = x2.shape[0], w1.shape[0]
        a = pooled_empty((tokens, inner), x.dtype, x.device)
        if gemm.onednn_active() and x.device.type == "cpu" and x.dtype == torch.float32:
            rows = _chunk_rows(inner, x.element_size())
            if rows >= tokens:
                h = gemm.matmul_nt(x2, w1, b1)
                torch._C._nn.gelu(h, approximate="tanh", out=a)
            else:  # each chunk copied into one pooled buffer: a chunk's heap block serves the next
                h = pooled_empty((tokens, inner), x.dtype, x.device)
                for s in range(0, tokens, rows):
                    part = gemm.matmul_nt(x2[s:s + rows], w1, b1)
                    torch._C._nn.gelu(part, approximate="tanh", out=a[s:s + rows])
                    h[s:s + rows] = part
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
        x2, w1, w2, h, a = ctx.saved_tensors
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
                torch.ops.aten.gelu_backward.grad_input(grad_h, h[s:s + rows], approximate="tanh", grad_input=grad_h)
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


def _chunk_rows(inner: int, element_size: int) -> int:
    """Rows of an (rows, inner) chunk within `MLP_CHUNK_BYTES` (at least 1)."""
    return max(1, MLP_CHUNK_BYTES // (inner * element_size))


def mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The MLP via `MlpFn`: x (..., D), w1 (I, D), b1 (I,), w2 (D, I), b2 (D,) -> (..., D); every
    tensor fp32 (the caller falls back to `mlp_ref` otherwise)."""
    return MlpFn.apply(x, w1, b1, w2, b2)


def mlp_ref(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The same MLP through plain autograd, as the modules compute it."""
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
