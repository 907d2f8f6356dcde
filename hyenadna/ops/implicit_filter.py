"""The implicit filter's MLP as one fast autograd node, and its reference.

    s_0 = z,  s_{i+1} = sin(f (W_i s_i + b_i)),  k = (W_out s_n^T) * decay

z (L, E) positional features, f (1, F) the frequency shared by every sine, (W_i, b_i) the MLP's
Linear layers, W_out (D, F) its bias-free last layer, decay (D, L) or None -> k (D, L) fp32, the
layout of the FFT convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hyenadna.ops.buffers import pooled_empty


class ImplicitFilterFn(torch.autograd.Function):
    """The filter MLP + decay with a hand-written backward; with padded_to, k is written into the
    front of a zero-padded (D, padded_to) buffer for the FFT.

    Autograd through the modules runs about a dozen (L, F)-sized passes per MLP layer, and these
    activations do not depend on the batch, so at batch 1 and short L the filter is a large share
    of the operator's step (`python benchmarks/bench_operator_parts.py`). Here the shared frequency
    f is folded into each layer's small weights, so a layer is one GEMM and one sine forward, and
    one cosine, one product, two GEMMs and a column sum backward. With dp_i the gradient of sin's
    argument, P_i = dp_i^T s_i and c_i = sum_t dp_i, every parameter gradient is a small
    expression of those two:
        dW_i = f^T P_i,  db_i = f c_i,  df = sum_i rowsum(W_i P_i) + b_i c_i,  ds_i = dp_i (f^T W_i),
    the frequency's because sum_t dp_i (W_i s_i + b_i) = rowsum(W_i P_i) + b_i c_i. Per layer only
    s_i and p_i are kept (autograd keeps three (L, F) tensors), and the decay is applied in place.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, decay: Tensor | None, padded_to: int | None, freq: Tensor,  # type: ignore[override]
                w_out: Tensor, *linear: Tensor) -> Tensor:
        f_col = freq.reshape(-1, 1)  # (F, 1): scales the rows of an (F, in) weight
        s, saved = z, []
        for w, b in zip(linear[0::2], linear[1::2]):
            w_f = f_col * w
            p = pooled_empty((s.shape[0], w.shape[0]), s.dtype, s.device)
            torch.addmm(b * freq, s, w_f.mT, out=p)  # (L, F) = f (s W^T + b)
            saved += [s, p, w_f]
            s = torch.sin(p, out=pooled_empty(p.shape, p.dtype, p.device))
        # (D, L): the FFT's layout, no transpose copy; with padded_to, written into the front of
        # the zero-padded buffer the FFT reads.
        seq_len = z.shape[0]
        out = pooled_empty((w_out.shape[0], padded_to or seq_len), s.dtype, s.device)
        out[:, seq_len:].zero_()
        k = torch.mm(w_out, s.mT, out=out[:, :seq_len])
        if decay is not None:
            k.mul_(decay)
        ctx.has_decay = decay is not None
        ctx.save_for_backward(decay if decay is not None else k.new_empty(0), freq, w_out, s, *linear, *saved)
        return out

    @staticmethod
    def backward(ctx: Any, grad_k: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        decay, freq, w_out, s, *rest = ctx.saved_tensors
        grad_k = grad_k[:, :s.shape[0]]  # the pad is constant
        layers = len(rest) // 5
        linear, saved = rest[:2 * layers], rest[2 * layers:]
        # Inputs: z, decay, padded_to, freq, w_out, then W_0, b_0, W_1, b_1, ...
        need = ctx.needs_input_grad
        need_z, need_freq, need_w_out, need_linear = need[0], need[3], need[4], need[5:]
        f_row, f_col = freq.reshape(-1), freq.reshape(-1, 1)
        grad_w_out = None
        grad_linear: list[Tensor | None] = [None] * (2 * layers)
        grad_freq = torch.zeros_like(f_row)
        g = grad_k  # (D, L)
        if ctx.has_decay:
            g = torch.mul(grad_k, decay, out=pooled_empty(grad_k.shape, grad_k.dtype, grad_k.device))
        if need_w_out:
            grad_w_out = torch.mm(g, s)
        # Two (L, F) buffers for the whole chain: grad_s (overwritten by each layer's input
        # gradient once read) and grad_p (each layer's cosine), not two fresh ones per layer.
        grad_s = torch.mm(g.mT, w_out, out=pooled_empty((g.shape[1], w_out.shape[1]), g.dtype, g.device))  # (L, F)
        del g
        grad_p = None
        for i in reversed(range(layers)):
            (w, b), (s_in, p, w_f) = linear[2 * i:2 * i + 2], saved[3 * i:3 * i + 3]
            grad_p = torch.cos(p, out=pooled_empty(p.shape, p.dtype, p.device) if grad_p is None else grad_p)
            grad_p.mul_(grad_s)  # (L, F)
            p_mat, p_sum = torch.mm(grad_p.mT, s_in), grad_p.sum(0)  # (F, in), (F,)
            if need_linear[2 * i]:
                grad_linear[2 * i] = f_col * p_mat
            if need_linear[2 * i + 1]:
                grad_linear[2 * i + 1] = f_row * p_sum
            if need_freq:
                grad_freq.add_(torch.linalg.vecdot(w, p_mat)).addcmul_(b, p_sum)
            if i > 0:
                grad_s = torch.mm(grad_p, w_f, out=grad_s)  # every hidden layer is (F, F)
            elif need_z:
                grad_s = torch.mm(grad_p, w_f)
        return (grad_s if need_z else None, None, None, grad_freq.reshape(freq.shape) if need_freq else None,
                grad_w_out, *grad_linear)


def implicit_filter(z: Tensor, decay: Tensor | None, freq: Tensor, w_out: Tensor, linear: Sequence[Tensor],
                    padded_to: int | None = None) -> Tensor:
    """k (D, L) via `ImplicitFilterFn` for z (L, E), decay (D, L) or None, freq (1, F), w_out
    (D, F) and linear = (W_0, b_0, W_1, b_1, ...); (D, padded_to) with zeros after L if given."""
    return ImplicitFilterFn.apply(z, decay, padded_to, freq, w_out, *linear)


def implicit_filter_ref(z: Tensor, decay: Tensor | None, freq: Tensor, w_out: Tensor,
                        linear: Sequence[Tensor]) -> Tensor:
    """The same filter through plain autograd: sine layers, last layer, decay; same contract."""
    s = z
    for w, b in zip(linear[0::2], linear[1::2]):
        s = torch.sin(freq * F.linear(s, w, b))
    k = w_out @ s.mT
    return k if decay is None else k * decay
