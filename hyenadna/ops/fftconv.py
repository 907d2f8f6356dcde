"""Causal FFT long convolution: the fast autograd Functions, the chunked no-grad form, the references.

    y_t = sum_{s<=t} k_s u_{t-s} + bias u_t        u (B, D, L), k (D, L), bias (D,) -> (B, D, L)

`fftconv` / `FFTConvFn`        fp32 transform at a 5-smooth size >= 2L - 1, hand-written backward
`gated_fftconv` / `GatedFFTConvFn`  the order-2 Hyena core x0 * fftconv(x1 * v) as one node
`fftconv_inference`            no autograd, channel chunks of bounded size, optional cached spectrum
`fftconv_ref`                  the plain way: zero-pad to 2L, autograd through rfft/irfft
`causal_conv_direct`           the O(L^2) definition, which tests hold all of the above to

Every transform runs in fp32 even under bf16/fp16 autocast: half-precision FFTs lose too many
bits over long sequences.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hyenadna.ops.buffers import pooled_empty
from hyenadna.ops.common import INFERENCE_CHUNK_ELEMENTS, autocast_off


def fft_size(seq_len: int) -> int:
    """Smallest 2^a 3^b 5^c >= 2L - 1: any zero-padded length >= 2L - 1 makes the circular
    convolution of two length-L signals an exact linear one, and 5-smooth sizes are the ones the
    FFT libraries run fastest (2L itself is 5-smooth only when L is)."""
    target = 2 * seq_len - 1
    best = 1 << (target - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < target:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


# --------------------------------------------------------------------------------------------
# Gradient helpers shared by the two Functions
# --------------------------------------------------------------------------------------------


def _input_gradient(g: Tensor, g_f: Tensor, kc_f: Tensor, bias: Tensor, n: int) -> Tensor:
    """Gradient of a causal FFT conv y = k * u + bias u with respect to u, from the output
    gradient g (..., D, L), its spectrum g_f and the filter's conjugated spectrum kc_f: the
    correlation sum_t g_t k_{t-s} plus the skip term."""
    return torch.addcmul(torch.fft.irfft(g_f * kc_f, n=n)[..., :g.shape[-1]], g, bias.unsqueeze(-1))


def _filter_and_bias_gradients(g_f: Tensor, uc_f: Tensor, n: int, filter_len: int, need_filter: bool,
                               need_bias: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of a causal FFT conv y = k * u + bias u with respect to the filter (D, filter_len)
    and the bias (D,), from the spectrum of the output gradient g and the conjugated spectrum of the
    input u (..., D, n // 2 + 1).

    Both come from one product spectrum g_f uc_f, summed over every leading (batch) axis in
    frequency: its inverse transform is the correlation sum_t g_t u_{t-s}, which is the filter
    gradient at lag s and, at lag 0, the bias gradient sum_t g_t u_t. Without the filter gradient
    the bias gradient is the spectrum's Parseval sum. No (B, D, L) product is formed in the time
    domain. Overwrites g_f.
    """
    p = g_f.mul_(uc_f).reshape(-1, *g_f.shape[-2:])
    p = p[0] if p.shape[0] == 1 else torch.sum(p, 0, out=pooled_empty(p.shape[1:], p.dtype, p.device))
    if not need_filter:
        return None, parseval_sum(p, n) if need_bias else None
    corr = torch.fft.irfft(p, n=n)
    return corr[..., :filter_len], corr[..., 0].clone() if need_bias else None


def _conj_in_place(*spectra: Tensor) -> None:
    """Conjugate spectra in place, for the correlations of backward. A product with a lazily
    conjugated tensor (x * y.conj()) resolves the conjugate into a fresh copy first, several
    times the cost of a plain product on CPU; the in-place pass allocates nothing."""
    for x in spectra:
        x.conj_physical_()


def parseval_sum(p: Tensor, n: int) -> Tensor:
    """sum_t a_t b_t of two real length-n signals from the half spectrum p = rfft(a) conj(rfft(b))
    (..., n // 2 + 1): the full spectrum's sum over n, where the bins other than 0 (and n/2, for
    even n) stand for themselves and their mirror image."""
    re = p.real
    total = 2 * re.sum(-1) - re[..., 0]
    if n % 2 == 0:
        total = total - re[..., -1]
    return total / n


def _padded_product(a: Tensor, b: Tensor, n: int) -> Tensor:
    """a * b (B, C, L) in fp32, written into the first L positions of zero-padded rows: -> the
    buffer (B, C, 2 (n // 2 + 1)), whose first n columns are the rfft input of size n and which
    `_as_spectrum` reuses for an (n // 2 + 1)-bin spectrum once that input is spent."""
    *lead, seq_len = a.shape
    buf = pooled_empty((*lead, 2 * (n // 2 + 1)), torch.float32, a.device)
    buf[..., seq_len:].zero_()
    torch.mul(a, b, out=buf[..., :seq_len])
    return buf


def _as_spectrum(buf: Tensor, n: int) -> Tensor:
    """A `_padded_product` buffer viewed as a complex (B, C, n // 2 + 1) spectrum."""
    return torch.view_as_complex(buf.view(*buf.shape[:-1], n // 2 + 1, 2))


# --------------------------------------------------------------------------------------------
# The fast Functions
# --------------------------------------------------------------------------------------------


class FFTConvFn(torch.autograd.Function):
    """fp32 FFT long convolution with a hand-written backward.

    Autograd through rfft/irfft would differentiate the zero padding and run full complex
    transforms; here backward is two real transforms per signal (the correlations with k and
    with u) plus one for the filter gradient, whose batch sum is taken in the frequency domain.
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, k: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        seq_len = u.shape[-1]
        n = fft_size(seq_len)
        k_f = torch.fft.rfft(k, n=n)
        u_f = torch.fft.rfft(u, n=n)
        y = torch.fft.irfft(u_f * k_f, n=n)[..., :seq_len]
        _conj_in_place(u_f, k_f)
        ctx.save_for_backward(u, u_f, k_f, bias)  # both spectra conjugated
        ctx.n = n
        return torch.addcmul(y, u, bias.unsqueeze(-1))

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        u, uc_f, kc_f, bias = ctx.saved_tensors
        n, seq_len = ctx.n, u.shape[-1]
        grad_y = grad_y.contiguous()
        g_f = torch.fft.rfft(grad_y, n=n)
        grad_u = grad_k = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_u = _input_gradient(grad_y, g_f, kc_f, bias, n)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_k, grad_bias = _filter_and_bias_gradients(g_f, uc_f, n, seq_len, *ctx.needs_input_grad[1:3])
        return grad_u, grad_k, grad_bias


class GatedFFTConvFn(torch.autograd.Function):
    """The order-2 Hyena core on the short-conv output x = [x0; x1; v] (B, 3D, L), fp32:
    y = x0 * (k * z + bias z) with z = x1 v and * the causal long convolution.

    One node instead of gate, FFT conv, gate: backward writes the three input gradients straight
    into one (B, 3D, L) buffer (autograd would concatenate them after the split), and the gated
    product z is not stored (its spectrum is). The skip term bias z is the convolution's tap at lag
    0, so it is folded into the filter's spectrum (a unit impulse transforms to 1 in every bin):
    no time-domain pass for it either way, and the bias gradient is the filter gradient at lag 0.
    The two gated products the transforms take (z forward, the conv output's gradient backward)
    are written into zero-padded buffers (no padding copy inside rfft) whose rows hold n // 2 + 1
    complex values, so the spectrum product that follows each transform overwrites the buffer
    instead of taking a fresh one.

    k is the filter (D, L) or, to spare rfft its padding copy, the filter already zero-padded to
    (D, fft_size(L)) (`HyenaFilter.filter(L, padded_to=n)`). For a padded k the gradient covers all
    n entries, the pad's too (circular correlations that nothing upstream reads: the pad is
    constant zeros).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, k: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        # x stays in its own dtype (bf16 under autocast: no fp32 copy is stored); k, bias, the
        # gated product, the transforms and the output are fp32.
        d, seq_len = x.shape[1] // 3, x.shape[-1]
        x0, x1, v = x[:, :d], x[:, d:2 * d], x[:, 2 * d:]
        n = fft_size(seq_len)
        if k.shape[-1] not in (seq_len, n):
            raise ValueError(f"filter length {k.shape[-1]} is neither the input length {seq_len} nor its FFT size {n}")
        k_f = torch.fft.rfft(k, n=n).add_(bias.unsqueeze(-1))  # + the skip tap
        buf = _padded_product(v.float(), x1, n)
        z_f = torch.fft.rfft(buf[..., :n])
        q = torch.mul(z_f, k_f, out=_as_spectrum(buf, n))  # z itself is no longer needed
        c = pooled_empty(x0.shape, torch.float32, x.device).copy_(torch.fft.irfft(q, n=n)[..., :seq_len])
        del buf, q
        _conj_in_place(z_f, k_f)
        ctx.save_for_backward(x, z_f, k_f, c)  # both spectra conjugated
        ctx.n, ctx.filter_len = n, k.shape[-1]
        return torch.mul(c, x0, out=pooled_empty(x0.shape, torch.float32, x.device))

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, zc_f, kc_f, c = ctx.saved_tensors
        n, seq_len, d = ctx.n, x.shape[-1], x.shape[1] // 3
        x0, x1, v = x[:, :d], x[:, d:2 * d], x[:, 2 * d:]
        buf = _padded_product(grad_y, x0, n)  # the gradient of the conv output c
        gc_f = torch.fft.rfft(buf[..., :n])
        grad_x = grad_k = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = pooled_empty(x.shape, x.dtype, x.device)
            torch.mul(grad_y, c, out=grad_x[:, :d])
            # The correlation with the filter, skip tap included, over the spent gradient buffer.
            grad_z = torch.fft.irfft(torch.mul(gc_f, kc_f, out=_as_spectrum(buf, n)), n=n)[..., :seq_len]
            torch.mul(grad_z, v, out=grad_x[:, d:2 * d])
            torch.mul(grad_z, x1, out=grad_x[:, 2 * d:])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_k, grad_bias = _filter_and_bias_gradients(gc_f, zc_f, n, ctx.filter_len, *ctx.needs_input_grad[1:3])
        return grad_x, grad_k, grad_bias


def fftconv(u: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """Causal long convolution via `FFTConvFn`: u (B, D, L), k (D, L), bias (D,) -> (B, D, L) in
    u's dtype; the transform runs in fp32 with autocast off."""
    with autocast_off(u.device.type):
        y = FFTConvFn.apply(u.float(), k.float(), bias.float())
    return y.to(u.dtype)


def gated_fftconv(x: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """Order-2 Hyena core x0 * fftconv(x1 * v, k, bias) via `GatedFFTConvFn`, for x = [x0; x1; v]
    (B, 3D, L), k (D, L) or zero-padded to (D, fft_size(L)), bias (D,) -> (B, D, L) in x's dtype;
    gating and transforms run in fp32, x's gradient comes back in x's dtype."""
    with autocast_off(x.device.type):
        y = GatedFFTConvFn.apply(x, k.float(), bias.float())
    return y.to(x.dtype)


def fftconv_inference(u: Tensor, bias: Tensor, k: Tensor | None = None, k_f: Tensor | None = None,
                      max_elements: int = INFERENCE_CHUNK_ELEMENTS) -> Tensor:
    """`fftconv` without autograd, in channel chunks of at most `max_elements` padded values.

    Give the filter k (D, L), or its spectrum k_f = rfft(k, fft_size(L)) (D, n // 2 + 1) when it
    is cached. A 1M-token forward then never holds a whole (B, D, n) or (D, n) spectrum; channels
    are independent, so the result is the same as one chunk.
    """
    seq_len, d = u.shape[-1], u.shape[-2]
    n = fft_size(seq_len)
    if (k is None) == (k_f is None):
        raise ValueError("fftconv_inference needs exactly one of k (the filter) and k_f (its spectrum)")
    if k is not None and k.shape != (d, seq_len):
        raise ValueError(f"filter has shape {tuple(k.shape)}, expected {(d, seq_len)}")
    if k_f is not None and k_f.shape != (d, n // 2 + 1):
        raise ValueError(f"filter spectrum has shape {tuple(k_f.shape)}, expected {(d, n // 2 + 1)} for L={seq_len}")
    batch = u.numel() // (d * seq_len)
    step = max(1, max_elements // max(1, batch * n))

    def channels(c0: int, c1: int) -> Tensor:
        kc = torch.fft.rfft(k[c0:c1].float(), n=n) if k is not None else k_f[c0:c1]
        uc = u[..., c0:c1, :].float()
        yc = torch.fft.irfft(torch.fft.rfft(uc, n=n) * kc, n=n)[..., :seq_len]
        return torch.addcmul(yc, uc, bias[c0:c1].float().unsqueeze(-1))

    with autocast_off(u.device.type):
        if step >= d:  # one chunk: no copy into an output buffer
            return channels(0, d).to(u.dtype)
        y = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        for c in range(0, d, step):
            y[..., c:c + step, :] = channels(c, c + step)
    return y.to(u.dtype)


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def fftconv_ref(u: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """`fftconv` written the plain way: zero-pad to 2L, autograd through rfft/irfft, fp32; same
    contract. The long convolution of the reference operator (`hyenadna.ops.hyena_operator_ref`)."""
    seq_len = u.shape[-1]
    with autocast_off(u.device.type):
        u32 = u.float()
        y = torch.fft.irfft(torch.fft.rfft(u32, n=2 * seq_len) * torch.fft.rfft(k.float(), n=2 * seq_len),
                            n=2 * seq_len)[..., :seq_len]
        y = y + u32 * bias.float().unsqueeze(-1)
    return y.to(u.dtype)


def causal_conv_direct(u: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """The O(L^2) direct sum y_t = sum_{s<=t} k_s u_{t-s} + bias u_t, in u's dtype (fp32 at
    least); same contract as `fftconv`, for tests only."""
    seq_len = u.shape[-1]
    dtype = torch.promote_types(u.dtype, torch.float32)
    idx = torch.arange(seq_len, device=u.device)
    lag = idx[:, None] - idx[None, :]  # (L_out, L_in): t - s
    toeplitz = k.to(dtype)[:, lag.clamp(min=0)] * (lag >= 0)  # (D, L, L)
    y = torch.einsum("dts,bds->bdt", toeplitz, u.to(dtype)) + u.to(dtype) * bias.to(dtype).unsqueeze(-1)
    return y.to(u.dtype)
