"""Causal depthwise short convolution: the fast autograd Function and its reference.

    y_t = b + sum_j w_j x_{t-k+1+j}        x (B, C, L), weight (C, 1, k), bias (C,) -> (B, C, L)

Same result as the operator's `nn.Conv1d` (padding k-1, first L outputs kept), as k shifted
multiply-adds: several times faster on CPU than oneDNN's depthwise kernel at k = 3, forward and
backward (`python benchmarks/bench_operator_parts.py` times it inside the operator).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hyenadna.ops.buffers import pooled_empty
from hyenadna.ops.common import SHORT_CONV_PRODUCT_ELEMENTS


def _shifted_taps(x: Tensor, taps: Tensor, bias: Tensor | None = None, reverse: bool = False,
                  out: Tensor | None = None) -> Tensor:
    """sum_j taps[:, j] * x shifted right by k-1-j (left, i.e. looking ahead, if reverse) + bias.

    x: (B, C, L), taps: (C, k), bias: (C, 1) or None. One multiply-add pass per tap over slices,
    with no padded copy. The first tap is a plain multiply and the bias is added last, in place:
    an out-of-place addcmul with a broadcast (C, 1) first operand is much slower on CPU. `out`:
    a (B, C, L) buffer to write the result into.
    """
    k, seq_len = taps.shape[-1], x.shape[-1]
    y = torch.mul(x, taps[:, k - 1:k], out=out)
    for lag in range(1, min(k, seq_len)):
        w = taps[:, k - 1 - lag:k - lag]
        if reverse:
            y[..., :seq_len - lag].addcmul_(x[..., lag:], w)
        else:
            y[..., lag:].addcmul_(x[..., :seq_len - lag], w)
    return y if bias is None else y.add_(bias)


class ShortConvFn(torch.autograd.Function):
    """The short convolution with a hand-written backward: the input gradient is the same sum
    looking ahead, the weight gradient k dot products per channel."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, product_elements: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.param_dtypes = (weight.dtype, bias.dtype)
        ctx.product_elements = product_elements
        # In x's dtype, as nn.Conv1d under autocast: bf16 activations stay bf16, not promoted to fp32.
        return _shifted_taps(x, weight[:, 0].to(x.dtype), bias.to(x.dtype).unsqueeze(-1),
                             out=pooled_empty(x.shape, x.dtype, x.device))

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        taps, seq_len = weight.shape[-1], x.shape[-1]
        grad_x = grad_w = grad_b = None
        w_dtype, b_dtype = ctx.param_dtypes
        acc = torch.promote_types(grad_y.dtype, torch.float32)  # sums of B x L terms: at least fp32
        prod_dtype = torch.promote_types(grad_y.dtype, x.dtype)
        # The input gradient's buffer, when it has the products' dtype, first holds them.
        grad_x_buf = (pooled_empty(x.shape, x.dtype, x.device) if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
                      and x.dtype == grad_y.dtype == prod_dtype else None)
        if ctx.needs_input_grad[1]:
            # sum_t grad_y_t x_{t - lag} per channel (tap j multiplies x_{t - lag}), summed in at
            # least fp32. The products go through one buffer shared by the taps (each fills a
            # prefix): the input gradient's, before it is computed, else one over channel chunks
            # of at most `product_elements` values.
            batch, channels = x.shape[:2]
            if grad_x_buf is not None:
                step, prod = channels, grad_x_buf
            else:
                step = max(1, ctx.product_elements // (batch * seq_len))
                prod = torch.empty((batch, min(step, channels), seq_len), dtype=prod_dtype, device=x.device)
            grad_w = grad_y.new_zeros((channels, taps), dtype=acc)
            flat = prod.view(-1)  # each product contiguous: a sum over a strided prefix is ~2x slower
            for c0 in range(0, channels, step):
                c1 = min(c0 + step, channels)
                for j in range(max(0, taps - seq_len), taps):
                    lag = taps - 1 - j
                    shape = (batch, c1 - c0, seq_len - lag)
                    p = torch.mul(grad_y[:, c0:c1, lag:], x[:, c0:c1, :seq_len - lag],
                                  out=flat[:shape[0] * shape[1] * shape[2]].view(shape))
                    grad_w[c0:c1, j] = p.sum((0, 2), dtype=acc)
            grad_w = grad_w.unsqueeze(1).to(w_dtype)
        if ctx.needs_input_grad[0]:
            out = grad_x_buf if grad_x_buf is not None else pooled_empty(grad_y.shape, grad_y.dtype, grad_y.device)
            grad_x = _shifted_taps(grad_y, weight[:, 0].to(grad_y.dtype), reverse=True, out=out).to(x.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2), dtype=acc).to(b_dtype)
        return grad_x, grad_w, grad_b, None


def shortconv(x: Tensor, weight: Tensor, bias: Tensor,
              product_elements: int = SHORT_CONV_PRODUCT_ELEMENTS) -> Tensor:
    """The causal short convolution via `ShortConvFn`: x (B, C, L), weight (C, 1, k), bias (C,)
    -> (B, C, L) in x's dtype. `product_elements` bounds the weight gradient's product buffer."""
    return ShortConvFn.apply(x, weight, bias, product_elements)


def shortconv_ref(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The same convolution as `nn.Conv1d(C, C, k, groups=C, padding=k-1)` computes it, first L
    outputs: output t sees inputs t-k+1..t only."""
    taps = weight.shape[-1]
    return F.conv1d(x, weight, bias, padding=taps - 1, groups=x.shape[1])[..., :x.shape[-1]]
