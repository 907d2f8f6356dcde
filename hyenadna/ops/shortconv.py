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
from hyenadna.ops.common import SHORT_CONV_SLICE_ELEMENTS


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


def _taps_in_slices(x: Tensor, taps: Tensor, out: Tensor, slice_elements: int, bias: Tensor | None = None,
                    reverse: bool = False) -> Tensor:
    """`_shifted_taps` into `out`, over slices of at most `slice_elements` values (whole
    sequences, or channel ranges of one sequence when a sequence is larger), so that the k
    passes over a slice find it in cache (with the weight gradient's slices, the operator's
    fwd+bwd at 8 x 1024 took 0.96x the time, `benchmarks/ab_operator.py`). The shifts run along
    L only, so each value is the same sum as unsliced."""
    batch, channels, seq_len = x.shape
    per_seq = channels * seq_len
    if per_seq <= slice_elements:
        n = slice_elements // per_seq
        for b in range(0, batch, n):
            _shifted_taps(x[b:b + n], taps, bias, reverse, out=out[b:b + n])
        return out
    step = max(1, slice_elements // seq_len)
    for b in range(batch):
        for c in range(0, channels, step):
            _shifted_taps(x[b:b + 1, c:c + step], taps[c:c + step], None if bias is None else bias[c:c + step],
                          reverse, out=out[b:b + 1, c:c + step])
    return out


class ShortConvFn(torch.autograd.Function):
    """The short convolution with a hand-written backward: the input gradient is the same sum
    looking ahead, the weight gradient k dot products per channel."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, slice_elements: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.param_dtypes = (weight.dtype, bias.dtype)
        ctx.slice_elements = slice_elements
        # In x's dtype, as nn.Conv1d under autocast: bf16 activations stay bf16, not promoted to fp32.
        return _taps_in_slices(x, weight[:, 0].to(x.dtype), pooled_empty(x.shape, x.dtype, x.device), slice_elements,
                               bias.to(x.dtype).unsqueeze(-1))

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
            # least fp32, over channel slices of at most `slice_elements` values: the taps'
            # passes over a slice then find it in cache. The products go through one buffer
            # shared by the taps (each fills a prefix): the input gradient's, before it is
            # computed, else one of a slice's size.
            batch, channels = x.shape[:2]
            step = max(1, ctx.slice_elements // (batch * seq_len))
            prod = grad_x_buf if grad_x_buf is not None else torch.empty(
                (batch, min(step, channels), seq_len), dtype=prod_dtype, device=x.device)
            grad_w = grad_y.new_zeros((channels, taps), dtype=acc)
            flat = prod.view(-1)  # each product contiguous: a sum over a strided prefix is slower
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
            grad_x = _taps_in_slices(grad_y, weight[:, 0].to(grad_y.dtype), out, ctx.slice_elements,
                                     reverse=True).to(x.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2), dtype=acc).to(b_dtype)
        return grad_x, grad_w, grad_b, None


def shortconv(x: Tensor, weight: Tensor, bias: Tensor, slice_elements: int = SHORT_CONV_SLICE_ELEMENTS) -> Tensor:
    """The causal short convolution via `ShortConvFn`: x (B, C, L), weight (C, 1, k), bias (C,)
    -> (B, C, L) in x's dtype. `slice_elements` bounds the slices its passes run over."""
    return ShortConvFn.apply(x, weight, bias, slice_elements)


def shortconv_ref(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The same convolution as `nn.Conv1d(C, C, k, groups=C, padding=k-1)` computes it, first L
    outputs: output t sees inputs t-k+1..t only."""
    taps = weight.shape[-1]
    return F.conv1d(x, weight, bias, padding=taps - 1, groups=x.shape[1])[..., :x.shape[-1]]
