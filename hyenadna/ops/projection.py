"""The operator's in/out projections with the layout swap folded into the GEMM, and references.

The convolutions want channels first (B, D, L), the residual stream is (B, L, D). Transposing is
a strided copy of the operator's widest activation; instead in_proj and out_proj run as batched
GEMMs that read their operand transposed for free, forward and backward
(`python benchmarks/bench_operator_parts.py` times them inside the operator). In fp32 on CPU the
products go through oneDNN (`hyenadna.ops.gemm`, twice MKL's speed on AMD processors): in_proj
as one product over all positions written into the channels-first output with its bias, the
rest one product per sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from hyenadna.ops import gemm
from hyenadna.ops.buffers import pooled_empty
from hyenadna.ops.common import autocast_off, hooked


class ProjectionFn(torch.autograd.Function):
    """A Linear layer that also swaps the layout: (B, L, D_in) -> (B, D_out, L) (`to_channels`),
    or (B, D_in, L) -> (B, L, D_out). Every product is one batched GEMM that reads its operands
    transposed where needed, forward and backward, so the input gradient comes back contiguous in
    the input's own layout (autograd through a transposed view would hand the previous op a
    transposed gradient, read element by element or copied). Under autocast it computes in the
    autocast dtype, as nn.Linear does; gradients come back in each input's dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, to_channels: bool) -> Tensor:  # type: ignore[override]
        dev = x.device.type
        dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else torch.promote_types(x.dtype, weight.dtype))
        with autocast_off(dev):
            xc, w = x.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            ctx.save_for_backward(xc, w)
            ctx.to_channels = to_channels
            ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
            if _onednn_route(xc, w):
                return _forward_onednn(xc, w, b, to_channels)
            if to_channels:  # W (D_out, D_in) @ x^T (D_in, L) + b (D_out, 1)
                left, right = w.expand(x.shape[0], -1, -1), xc.mT
                b = None if b is None else b.unsqueeze(-1)
            else:  # x^T (L, D_in) @ W^T (D_in, D_out) + b
                left, right = xc.mT, w.mT.expand(x.shape[0], -1, -1)
            out = pooled_empty((x.shape[0], left.shape[1], right.shape[2]), dtype, x.device)
            if b is None:
                torch.bmm(left, right, out=out)
            elif dtype in (torch.float32, torch.float64):
                # GEMM, then the bias added in place: faster on CPU than baddbmm, which first
                # fills the output with the broadcast bias.
                torch.bmm(left, right, out=out).add_(b)
            else:  # half precision: one rounding of GEMM + bias, as nn.Linear
                torch.baddbmm(b, left, right, out=out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xc, w = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad = grad.to(xc.dtype)
        batch, acc = xc.shape[0], torch.promote_types(xc.dtype, torch.float32)  # sums in at least fp32
        grad_x = grad_w = grad_b = None
        with autocast_off(xc.device.type):
            if _onednn_route(xc, w) and grad.dtype == torch.float32:
                grad = grad.contiguous()
                grad_x, grad_w = _backward_onednn(grad, xc, w, ctx.to_channels, *ctx.needs_input_grad[:2])
                if ctx.needs_input_grad[2]:
                    grad_b = grad.sum((0, 2) if ctx.to_channels else (0, 1), dtype=acc).to(b_dtype)
                return grad_x, grad_w, grad_b, None
            if ctx.to_channels:  # grad (B, D_out, L)
                if ctx.needs_input_grad[0]:  # (B, L, D_in)
                    grad_x = torch.bmm(grad.mT, w.expand(batch, -1, -1),
                                       out=pooled_empty((batch, grad.shape[2], w.shape[1]), grad.dtype,
                                                        grad.device)).to(x_dtype)
                if ctx.needs_input_grad[1]:
                    grad_w = torch.bmm(grad, xc).sum(0, dtype=acc).to(w_dtype)  # sum_b grad @ x
                if ctx.needs_input_grad[2]:
                    grad_b = grad.sum((0, 2), dtype=acc).to(b_dtype)
            else:  # grad (B, L, D_out)
                if ctx.needs_input_grad[0]:  # (B, D_in, L)
                    grad_x = torch.bmm(w.mT.expand(batch, -1, -1), grad.mT,
                                       out=pooled_empty((batch, w.shape[1], grad.shape[1]), grad.dtype,
                                                        grad.device)).to(x_dtype)
                if ctx.needs_input_grad[1]:
                    grad_w = torch.bmm(grad.mT, xc.mT).sum(0, dtype=acc).to(w_dtype)  # sum_b grad^T @ x^T
                if ctx.needs_input_grad[2]:
                    grad_b = grad.sum((0, 1), dtype=acc).to(b_dtype)
        return grad_x, grad_w, grad_b, None


def _onednn_route(x: Tensor, w: Tensor) -> bool:
    """Whether ProjectionFn's products go through oneDNN (`hyenadna.ops.gemm`): fp32 on CPU."""
    return gemm.onednn_active() and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32


def _forward_onednn(x: Tensor, w: Tensor, b: Tensor | None, to_channels: bool) -> Tensor:
    """ProjectionFn's forward as oneDNN products (a @ b^T), fp32. to_channels: W (D_out, D_in)
    times all B L positions at once -> (D_out, B, L), written into the (B, D_out, L) output with
    the bias in one pass; else one product per sequence, y[b]^T W^T + bias -> (L, D_out)."""
    batch, d_out = x.shape[0], w.shape[0]
    if to_channels:  # x (B, L, D_in)
        seq_len = x.shape[1]
        prod = gemm.matmul_nt(w, x.reshape(batch * seq_len, -1)).view(d_out, batch, seq_len)
        out = pooled_empty((batch, d_out, seq_len), x.dtype, x.device)
        if b is None:
            return out.copy_(prod.transpose(0, 1))
        return torch.add(prod.transpose(0, 1), b.unsqueeze(-1), out=out)
    seq_len = x.shape[2]  # x (B, D_in, L)
    if batch == 1:
        return gemm.matmul_nt(x[0].mT, w, b).unsqueeze(0)
    out = pooled_empty((batch, seq_len, d_out), x.dtype, x.device)
    for i in range(batch):
        out[i] = gemm.matmul_nt(x[i].mT, w, b)
    return out


def _backward_onednn(grad: Tensor, x: Tensor, w: Tensor, to_channels: bool, need_x: bool,
                     need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """ProjectionFn's input and weight gradients as oneDNN products, fp32 (the weight gradient
    summed over the sequences in fp32 by accumulating each sequence's product)."""
    batch = x.shape[0]
    grad_x = grad_w = None
    if to_channels:  # grad (B, D_out, L), x (B, L, D_in)
        if need_x:  # grad[b]^T W: (L, D_in) per sequence, as the transpose of W^T grad[b] (D_in, L):
            # oneDNN would copy grad[b]^T (L, D_out) row-major first; the transpose copies D_in/D_out of that
            wt = w.mT.contiguous()
            grad_x = pooled_empty(x.shape, x.dtype, x.device)
            for i in range(batch):
                grad_x[i].copy_(gemm.matmul_nt(wt, grad[i].mT).mT)
        if need_w:  # sum_b grad[b] x[b]: (D_out, D_in)
            for i in range(batch):
                g = gemm.matmul_tn(grad[i].mT, x[i])
                grad_w = g if grad_w is None else grad_w.add_(g)
        return grad_x, grad_w
    # grad (B, L, D_out), x (B, D_in, L)
    if need_x:  # W^T times all B L positions at once -> (D_in, B, L) -> (B, D_in, L)
        seq_len, d_in = x.shape[2], x.shape[1]
        prod = gemm.matmul_nt(w.mT.contiguous(), grad.reshape(batch * seq_len, -1)).view(d_in, batch, seq_len)
        grad_x = prod.unsqueeze(0)[:, :, 0] if batch == 1 else \
            pooled_empty(x.shape, x.dtype, x.device).copy_(prod.transpose(0, 1))
    if need_w:  # sum_b grad[b]^T x[b]^T: (D_out, D_in)
        for i in range(batch):
            g = gemm.matmul_tn(grad[i], x[i].mT)
            grad_w = g if grad_w is None else grad_w.add_(g)
    return grad_x, grad_w


def _plain_linear(module: nn.Module) -> bool:
    """True for an nn.Linear with no forward hooks: safe to apply as a raw GEMM on its weights."""
    return type(module) is nn.Linear and not hooked(module)


def linear_channels_first(linear: nn.Module, u: Tensor) -> Tensor:
    """linear(u) for u (B, L, D_in), returned as a contiguous (B, D_out, L): W @ u^T + b in one GEMM.

    Any other module in the slot (an adapter wrapping the Linear, say), or a Linear with forward
    hooks, is called as a module and transposed, so wrappers and hooks still see their input.
    """
    if not _plain_linear(linear):
        return linear_channels_first_ref(linear, u)
    return ProjectionFn.apply(u, linear.weight, linear.bias, True)


def linear_channels_last(linear: nn.Module, y: Tensor) -> Tensor:
    """linear(y^T) for y (B, D_in, L) channels first -> (B, L, D_out): y^T @ W^T + b in one GEMM
    (a wrapped or hooked Linear is called as a module, as in `linear_channels_first`)."""
    if not _plain_linear(linear):
        return linear_channels_last_ref(linear, y)
    return ProjectionFn.apply(y, linear.weight, linear.bias, False)


def linear_channels_first_ref(linear: nn.Module, u: Tensor) -> Tensor:
    """The module call, then a transpose: u (B, L, D_in) -> contiguous (B, D_out, L)."""
    return rearrange(linear(u), "b l d -> b d l").contiguous()


def linear_channels_last_ref(linear: nn.Module, y: Tensor) -> Tensor:
    """A transpose, then the module call: y (B, D_in, L) -> (B, L, D_out)."""
    return linear(rearrange(y, "b d l -> b l d"))
