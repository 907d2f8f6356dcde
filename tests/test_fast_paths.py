"""The fast paths of hyenadna.ops and hyenadna.model equal their slow references.

FFT conv (hand-written backward, 5-smooth sizes) vs the O(L^2) direct conv, the shifted-tap short
conv vs nn.Conv1d, the transpose-free operator vs the reference one (`HyenaOperator.forward_ref`),
a model trained on the fast paths vs on the references (`use_fast_path=False`), the fused implicit
filter vs its modules, cached vs fresh filter spectra and decays, chunked no-grad inference vs
the training path, bf16 autocast vs fp32.
"""

from __future__ import annotations

import copy
import importlib
import math
from dataclasses import replace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import hyenadna.ops.buffers as buffers_module
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM, HyenaFilter, HyenaOperator
from hyenadna.ops import (
    GatedFFTConvFn,
    causal_conv_direct,
    fft_size,
    fftconv,
    fftconv_inference,
    gated_fftconv,
    implicit_filter,
    implicit_filter_ref,
    linear_channels_first,
    linear_channels_last,
    mlp,
    mlp_ref,
    parseval_sum,
    shortconv,
)
from hyenadna.ops.buffers import BufferPool


def make_operator(d: int = 16, l_max: int = 80, order: int = 2) -> HyenaOperator:
    return HyenaOperator.from_config(HyenaConfig(d_model=d, l_max=l_max, hyena_order=order))


def grads(out: torch.Tensor, weight: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * weight).sum(), inputs))


U32 = torch.finfo(torch.float32).eps / 2  # unit roundoff: one rounding's relative error is at most this
UBF16 = torch.finfo(torch.bfloat16).eps / 2


def gamma(terms: int, dtype: torch.dtype = torch.float32) -> float:
    """gamma_K = K u / (1 - K u): a sum of K products in `dtype`, in any order or blocking, is off
    by at most gamma_K times the sum of the terms' magnitudes (Higham, Accuracy and Stability, 3.1)."""
    u = torch.finfo(dtype).eps / 2
    return terms * u / (1 - terms * u)


def magnitudes(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    """The magnitudes of the terms summed in fn's output and in each input's gradient (for the
    output gradient g): fn and its backward on absolute values in float64. fn is made of sums and
    products only, so each term becomes its absolute value."""
    a = [x.detach().abs().double().requires_grad_() for x in inputs]
    y = fn(*a)
    return [y.detach(), *torch.autograd.grad(y, a, g.detach().abs().double())]


def fftconv_rounding_bound(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, sigmas: float = 8.0,
                           n: int | None = None) -> torch.Tensor:
    """A bound (B, D, L) on how far an fp32 FFT convolution y = k * u + bias u of n points
    (default fft_size(L), the fast path's; any batch or channel split) can be from the exact one.

    Probabilistic model as in `filter_rounding_bound`: each of the about log2(n) + 1 passes of a
    transform rounds every value by an independent relative error of at most u, and the
    unnormalised transform scales the 2-norm by sqrt(n), so every bin of rfft(x) is off by about
    u sqrt(log2 n + 1) sqrt(n) ||x||_2. Through the product of the spectra of u and k (the bias
    counted as one more tap) and the inverse transform (1 / n), three such errors leave each output
    off by sigma = u sqrt(3 (log2 n + 1)) ||u||_2 ||k, bias||_2 / sqrt(n) in rms; `sigmas` of those,
    plus one rounding of the terms' magnitude for the final add."""
    n = n or fft_size(u.shape[-1])
    u64, k64, b64 = (x.detach().double() for x in (u, k, bias))
    norms = u64.norm(dim=-1, keepdim=True) * (k64.square().sum(-1, keepdim=True) + b64.square()[:, None]).sqrt()
    sigma = U32 * math.sqrt(3 * (math.log2(n) + 1)) * norms / math.sqrt(n)
    return sigmas * sigma + U32 * causal_conv64(u64.abs(), k64.abs(), b64.abs())


def causal_conv64(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s<=t} k_s u_{t-s} + bias u_t as a direct sum in float64 (u (B, D, L), k (D, L))."""
    u, k, bias = u.double(), k.double(), bias.double()
    return F.conv1d(F.pad(u, (u.shape[-1] - 1, 0)), k.flip(-1)[:, None], groups=u.shape[1]) + bias[:, None] * u


@pytest.mark.parametrize("seq_len", range(1, 40))
def test_fft_size_is_smallest_5_smooth_at_least_2l_minus_1(seq_len: int) -> None:
    def smooth(n: int) -> bool:
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1
    want = next(n for n in range(2 * seq_len - 1, 4 * seq_len + 2) if smooth(n))
    assert fft_size(seq_len) == want


def test_fft_size_of_power_of_two_is_2l() -> None:
    assert [fft_size(1 << i) for i in (10, 14, 20)] == [1 << 11, 1 << 15, 1 << 21]


@pytest.mark.parametrize("seq_len", [1, 2, 5, 8, 63, 64, 100, 257])
def test_fftconv_forward_and_backward_equal_direct_conv(seq_len: int) -> None:
    torch.manual_seed(seq_len)
    u = torch.randn(3, 4, seq_len, requires_grad=True)
    k = torch.randn(4, seq_len, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    g = torch.randn(3, 4, seq_len)
    y, y_ref = fftconv(u, k, bias), causal_conv_direct(u, k, bias)
    tol = 1e-5 * math.sqrt(seq_len) * 4
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    for got, want in zip(grads(y, g, [u, k, bias]), grads(y_ref, g, [u, k, bias])):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * math.sqrt(3 * seq_len))


def test_fftconv_backward_passes_gradcheck() -> None:
    """Finite differences through the fp32 transform (fp64 leaves): the hand-written backward is the
    true derivative, including the batch sum of the filter gradient."""
    torch.manual_seed(0)
    u = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fftconv(*a).double(), (u, k, bias), eps=1e-2, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("slice_elements", [1 << 24, 100, 400])
@pytest.mark.parametrize("seq_len", [1, 2, 3, 11, 12, 50])
@pytest.mark.parametrize("input_grad", [True, False])
def test_short_conv_equals_conv1d_module(seq_len: int, slice_elements: int, input_grad: bool) -> None:
    """Values and gradients to fp64 precision. With the input gradient the weight gradient's
    products go through its buffer, without through their own. A small `slice_elements` makes
    the passes run over slices (batch 2, 6 channels). 100 values: forward and input gradient
    over channel ranges of one sequence (2 channels at L = 50) or one sequence at a time
    (L = 11, 12), the weight gradient over channel ranges of the batch (1 channel at L = 50; 4
    and a last 2 at L = 11, 12). 400: one sequence at a time at L = 50, weight gradient 4 + 2."""
    torch.manual_seed(seq_len)
    conv = torch.nn.Conv1d(6, 6, kernel_size=3, groups=6, padding=2).double()
    x = torch.randn(2, 6, seq_len, dtype=torch.float64, requires_grad=input_grad)
    g = torch.randn(2, 6, seq_len, dtype=torch.float64)
    params = [x, conv.weight, conv.bias] if input_grad else [conv.weight, conv.bias]
    y, y_ref = shortconv(x, conv.weight, conv.bias, slice_elements), conv(x)[..., :seq_len]
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(y, g, params), grads(y_ref, g, params)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order,seq_len", [(2, 1), (2, 33), (2, 80), (3, 47)])
def test_operator_equals_straightforward_reference(order: int, seq_len: int) -> None:
    torch.manual_seed(seq_len)
    op = make_operator(order=order)
    u = torch.randn(2, seq_len, 16, requires_grad=True)
    g = torch.randn(2, seq_len, 16)
    y, y_ref = op(u), op.forward_ref(u)
    bound = 2 * operator_rounding_bound(op, u)  # both are fp32 evaluations of the same exact operator
    assert bound.max() < 1e-3 * y_ref.abs().max()  # tight enough to catch a wrong gate, filter or tap
    assert ((y - y_ref).abs() <= bound).all(), ((y - y_ref).abs() / bound).max()
    params = [u, *op.parameters()]
    for got, want in zip(grads(y, g, params), grads(y_ref, g, params)):
        # Relative to each gradient's scale: the first filter layer's reach ~70 here, where fp32
        # rounding alone (either side against fp64) is ~4e-4.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("order", [2, 3])
def test_model_on_the_references_trains_to_the_same_losses(order: int) -> None:
    """`use_fast_path=False` runs every layer on the plain references (module projections,
    nn.Conv1d's short conv, the filter's modules, the FFT at 2L through autograd) with the same
    parameters and state-dict keys. The first step's gradients agree as the operator's do (fp32
    rounding, `test_operator_equals_straightforward_reference`), and four AdamW steps later the
    losses agree to 1e-5 relative: each step's loss is a mean over 128 tokens whose logits are
    off by rounding, a few fp32 ulps of the loss."""
    torch.manual_seed(0)
    config = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=70, hyena_order=order)
    fast = HyenaDNAForCausalLM(config)
    ref = HyenaDNAForCausalLM(replace(config, use_fast_path=False))
    assert list(ref.state_dict()) == list(fast.state_dict())
    ref.load_state_dict(fast.state_dict())
    assert not ref.backbone.layers[0].mixer.use_fast_path
    ids = [torch.randint(7, 11, (2, 65)) for _ in range(4)]

    def train(model: HyenaDNAForCausalLM) -> tuple[list[float], list[torch.Tensor]]:
        torch.manual_seed(1)  # the same embedding-dropout masks
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses, first_grads = [], []
        for x in ids:
            loss = model(x[:, :-1], targets=x[:, 1:]).loss
            loss.backward()
            first_grads = first_grads or [p.grad.clone() for p in model.parameters()]
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, first_grads

    (want, want_grads), (got, got_grads) = train(fast), train(ref)
    assert want[-1] < want[0]  # it learns
    for (name, _), a, b in zip(fast.named_parameters(), want_grads, got_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()), msg=name)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("seq_len", [7, 64])
def test_chunked_inference_conv_equals_whole(seq_len: int) -> None:
    torch.manual_seed(0)
    u, k, bias = torch.randn(2, 10, seq_len), torch.randn(10, seq_len), torch.randn(10)
    k_f = torch.fft.rfft(k, n=fft_size(seq_len))
    whole = fftconv(u, k, bias)
    bound = 2 * fftconv_rounding_bound(u, k, bias)  # both are fp32 evaluations of the same exact conv
    assert bound.max() < 1e-3 * whole.abs().max()  # tight enough to catch a wrong channel or filter slice
    for budget in (1, 3 * fft_size(seq_len), 1 << 30):  # 1 channel, a ragged split, one chunk
        for got in (fftconv_inference(u, bias, k_f=k_f, max_elements=budget),
                    fftconv_inference(u, bias, k=k, max_elements=budget)):
            assert ((got - whole).abs() <= bound).all(), ((got - whole).abs() / bound).max()
    with pytest.raises(ValueError, match="filter spectrum has shape"):
        fftconv_inference(u, bias, k_f=k_f[:5])
    with pytest.raises(ValueError, match="exactly one"):
        fftconv_inference(u, bias, k=k, k_f=k_f)


def small_lm(**overrides) -> HyenaDNAForCausalLM:
    torch.manual_seed(0)
    return HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=100, embed_dropout=0.0,
                                           **overrides))


@pytest.mark.parametrize("cache", [True, False])
def test_chunked_no_grad_inference_equals_training_path(cache: bool) -> None:
    model = small_lm().eval()
    ids = torch.randint(0, 12, (3, 97))
    want = model(ids).logits  # grad enabled: the autograd path, no chunks, no cache
    for layer in model.backbone.layers:
        layer.inference_chunk_tokens = 7  # 3 x 97 tokens in ragged slices of 2 positions
        layer.mixer.inference_chunk_elements = 200  # one channel at a time
        layer.mixer.filter_fn.spectrum_cache_max_bytes = (1 << 28) if cache else 0
        layer.mixer.filter_fn.inference_chunk_positions = 13
    with torch.inference_mode():
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eval_spectrum_is_cached_and_follows_parameter_changes() -> None:
    model = small_lm().eval()
    filt = model.backbone.layers[0].mixer.filter_fn
    ids = torch.randint(0, 12, (1, 50))
    with torch.no_grad():
        model(ids)
        first = filt.spectrum(50)
        assert filt.spectrum(50) is first  # reused, not recomputed
        filt.implicit_filter[0].weight.mul_(1.5)  # an in-place update bumps the version counter
        changed = filt.spectrum(50)
        assert changed is not first
        torch.testing.assert_close(changed, torch.fft.rfft(filt.filter(50), n=fft_size(50)))
        assert not torch.allclose(changed, first)
        assert filt.spectrum(40).shape[-1] == fft_size(40) // 2 + 1  # another length, new entry
    # load_state_dict writes in place: the logits must follow the loaded weights
    other = small_lm()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, other.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_train_and_optimizer_steps_invalidate_the_cache() -> None:
    model = small_lm().eval()
    filt = model.backbone.layers[1].mixer.filter_fn
    ids = torch.randint(0, 12, (2, 40))
    with torch.inference_mode():
        model(ids)
    assert filt._spectrum_cache is not None
    model.train()
    assert filt._spectrum_cache is None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(ids, targets=ids).loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        got = model(ids).logits
    want = model(ids).logits  # grad path: recomputes the filter from the stepped parameters
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    """bf16 activations (8-bit mantissa) with fp32 FFT and filters: the operator output stays within
    3% relative error (Frobenius) of fp32; a bf16 FFT would be far worse at long L."""
    torch.manual_seed(0)
    op = make_operator(d=32, l_max=512)
    u = torch.randn(2, 512, 32)
    want = op(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op(u)
    assert got.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the short conv keeps bf16, as nn.Conv1d would
        x = shortconv(op.in_proj(u).mT, op.short_filter.weight, op.short_filter.bias)
    assert x.dtype == torch.bfloat16
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < 3e-2, err
    op.inference_chunk_elements = 64 * 96  # the sliced inference path under autocast too
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        sliced = op(u)
    assert sliced.dtype == torch.bfloat16
    assert ((sliced.float() - want).norm() / want.norm()).item() < 3e-2


def filter_mlp_rounding(filt: HyenaFilter,
                        seq_len: int) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor, torch.Tensor]:
    """The filter MLP's sine layers exact in float64, each value with the variance of the rounding
    error its fp32 evaluation carries (the model of `filter_rounding_bound`): per layer (input s,
    its variance, pre-activation, its variance, argument freq * pre, its variance), then the last
    sine output and its variance, all (L, features)."""
    u = U32
    z, _ = filt.pos_emb(seq_len)
    s, var = z[0].double(), torch.zeros_like(z[0], dtype=torch.float64)  # the same fp32 features on every path
    layers = list(filt.implicit_filter)
    records = []
    for lin, act in zip(layers[0:-1:2], layers[1:-1:2]):
        w, b, f = lin.weight.double(), lin.bias.double(), act.freq.double()
        k = w.shape[1] + 1
        pre = s @ w.T + b
        var_pre = var @ (w * w).T + k * u**2 * ((s * s) @ (w * w).T + b * b)
        arg = f * pre
        records.append((s, var, pre, var_pre, arg, f**2 * var_pre + u**2 * arg**2))
        var = (f * torch.cos(arg)) ** 2 * var_pre + u**2 * (arg * arg + 1)  # then round f * pre, and sin
        s = torch.sin(arg)
    return records, s, var


def filter_decay(filt: HyenaFilter, seq_len: int) -> torch.Tensor:
    """The filter's decay (D, L) in float64, 1 without modulation."""
    decay = filt.modulation.decay(filt.pos_emb(seq_len)[1][:, :, 0])
    return torch.ones((), dtype=torch.float64) if decay is None else decay.double()


def filter_rounding_bound(filt: HyenaFilter, seq_len: int, sigmas: float = 8.0) -> torch.Tensor:
    """A bound (D, L) on how far an fp32 evaluation of the filter can be from the exact one.

    Probabilistic rounding analysis (Higham & Mary, SIAM J. Sci. Comput. 2019): each rounding is
    an independent error of at most u |value|, so errors add in quadrature; a length-K dot product
    contributes sqrt(sum_k (u w_k s_k)^2 * K), and errors already in its inputs pass through
    the weights and through sin's derivative f cos(f x). The standard deviations are propagated
    in float64 and `sigmas` of them returned: any blocking, thread count or SIMD width stays
    inside, while a wrong slice (an O(|h|) error) does not."""
    u = U32
    _, s, var = filter_mlp_rounding(filt, seq_len)
    w_out = filt.implicit_filter[-1].weight.double()
    h = w_out @ s.T  # (D, L)
    var_h = (w_out * w_out) @ var.T + w_out.shape[1] * u**2 * ((w_out * w_out) @ (s * s).T)
    decay = filter_decay(filt, seq_len)
    return sigmas * torch.sqrt(var_h * decay**2 + u**2 * (h * decay) ** 2)


def filter_gradient_rounding_bounds(filt: HyenaFilter, seq_len: int, g: torch.Tensor,
                                    sigmas: float = 8.0) -> list[torch.Tensor]:
    """Bounds on how far the fp32 gradients of sum(filter(L) * g) with respect to the filter MLP's
    parameters (`filt.parameters()` without the skip bias, in that order) can be from the exact ones.

    The model of `filter_rounding_bound` run backward: a K-term sum adds K u^2 times its squared
    terms to the variance, a product or a cosine u^2 times its square, and the errors the forward
    values carry pass through the backward products. The frequency's gradient is counted as the
    sum over positions and input features of (dh s w) terms, which covers it whether the
    frequency is folded into the weights (fused path) or applied to the pre-activation (modules).
    """
    u = U32

    def product_var(a: torch.Tensor, var_a: torch.Tensor, b: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
        """Variance of a.T @ b (K = rows) from the operands' errors and the sum's roundings."""
        return var_a.T @ b**2 + (a**2).T @ var_b + a.shape[0] * u**2 * (a**2).T @ b**2

    records, s, var_s = filter_mlp_rounding(filt, seq_len)
    layers = list(filt.implicit_filter)
    g, decay = g.double(), filter_decay(filt, seq_len)
    dh = (g * decay).T  # (L, D)
    var_dh = 2 * u**2 * dh**2  # g rounded to fp32, then multiplied by the decay
    w_out = layers[-1].weight.double()
    out = {id(layers[-1].weight): product_var(dh, var_dh, s, var_s)}
    ds, var_ds = dh @ w_out, product_var(dh.T, var_dh.T, w_out, torch.zeros_like(w_out))
    freq_var = freq_sq = 0.0
    for (s_in, var_in, pre, var_pre, arg, var_arg), lin, act in reversed(
            list(zip(records, layers[0:-1:2], layers[1:-1:2]))):
        w, b, f = lin.weight.double(), lin.bias.double(), act.freq.double()
        da = ds * torch.cos(arg)
        var_da = torch.cos(arg) ** 2 * var_ds + (ds * torch.sin(arg)) ** 2 * var_arg + 2 * u**2 * da**2
        terms = (s_in**2 @ (w**2).T + b**2) * da**2  # (dh s w)^2 summed over input features
        freq_var = (freq_var + (pre**2 * var_da + da**2 * var_pre).sum(0)
                    + seq_len * (w.shape[1] + 1) * u**2 * terms.sum(0))
        freq_sq = freq_sq + (da * pre).sum(0) ** 2
        dpre = f * da
        var_dpre = f**2 * var_da + u**2 * dpre**2
        out[id(lin.weight)] = product_var(dpre, var_dpre, s_in, var_in)
        out[id(lin.bias)] = var_dpre.sum(0) + seq_len * u**2 * (dpre**2).sum(0)
        ds, var_ds = dpre @ w, product_var(dpre.T, var_dpre.T, w, torch.zeros_like(w))
    freq = layers[1].freq  # one Sin module, shared by every layer
    out[id(freq)] = (freq_var + len(records) * u**2 * freq_sq).reshape(freq.shape)
    return [sigmas * out[id(p)].sqrt() for p in filt.parameters() if p is not filt.bias]


def operator_rounding_bound(op: HyenaOperator, u: torch.Tensor, sigmas: float = 8.0) -> torch.Tensor:
    """A bound (B, L, D) on how far an fp32 evaluation of op(u), fused or straightforward, can be
    from the exact one.

    First-order forward error analysis in float64: a GEMM or direct sum of K products is off by at
    most gamma_K times its terms' magnitude (any order or blocking), an elementwise product by
    u |value|, and errors already in the operands pass through with the other operands' absolute
    values. The filter's error is `filter_rounding_bound`, independent from tap to tap (so it
    adds in quadrature through a convolution); each long convolution adds its own rounding,
    `fftconv_rounding_bound` at the larger of the two transforms' bounds (the fast path's
    fft_size(L) points, the reference's 2L).
    """
    op64 = copy.deepcopy(op).double()
    seq_len, d, taps = u.shape[1], op.d_model, op.short_filter.kernel_size[0]
    u64 = u.detach().double()
    w, b = op64.in_proj.weight, op64.in_proj.bias
    x, e = (u64 @ w.T + b).mT, (gamma(d + 1) * (u64.abs() @ w.abs().T + b.abs())).mT  # (B, (O+1) D, L)

    def short(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv1d(a, w, b, padding=taps - 1, groups=a.shape[1])[..., :seq_len]

    w, b = op64.short_filter.weight, op64.short_filter.bias
    x, e = short(x, w, b), short(e, w.abs()) + gamma(taps + 1) * short(x.abs(), w.abs(), b.abs())
    *gates, v = x.split(d, dim=1)
    *gate_errors, ev = e.split(d, dim=1)
    o = op.order - 1
    h = rearrange(module_filter(op64.filter_fn, seq_len), "(o d) l -> o d l", o=o)
    eh = rearrange(filter_rounding_bound(op.filter_fn, seq_len, sigmas), "(o d) l -> o d l", o=o)
    beta = rearrange(op64.filter_fn.bias, "(o d) -> o d", o=o)
    for i, (gate, eg) in enumerate(zip(reversed(gates[1:]), reversed(gate_errors[1:]))):
        p = v * gate
        ep = v.abs() * eg + gate.abs() * ev + U32 * p.abs()
        # the filter's rounding errors are independent from tap to tap: they add in quadrature
        filter_error = causal_conv64(p.square(), eh[i].square(), torch.zeros_like(beta[i])).sqrt()
        ev = (causal_conv64(ep, h[i].abs(), beta[i].abs()) + filter_error
              + torch.maximum(fftconv_rounding_bound(p, h[i], beta[i], sigmas),
                              fftconv_rounding_bound(p, h[i], beta[i], sigmas, n=2 * seq_len)))
        v = causal_conv64(p, h[i], beta[i])
    y = v * gates[0]
    ey = (v.abs() * gate_errors[0] + gates[0].abs() * ev + U32 * y.abs()).mT  # (B, L, D)
    w, b = op64.out_proj.weight, op64.out_proj.bias
    return ey @ w.abs().T + gamma(d + 1) * (y.abs().mT @ w.abs().T + b.abs())


def test_sliced_no_grad_filter_equals_whole_and_large_spectra_are_not_cached() -> None:
    filt = make_operator(l_max=80).filter_fn.eval()
    want = filt.filter(80)  # grad enabled: one slice
    bound = 2 * filter_rounding_bound(filt, 80)  # both are fp32 evaluations of the same exact filter
    filt.inference_chunk_positions = 7
    with torch.no_grad():
        got = filt.filter(80)
        assert ((got - want).double().abs() <= bound).all(), ((got - want).abs() / bound).max()
        assert bound.max() < 1e-3 * want.abs().max()  # the bound is tight enough to catch a wrong slice
        filt.spectrum_cache_max_bytes = 0
        assert filt.spectrum(80) is None and filt._spectrum_cache is None


def test_hooked_or_wrapped_projections_still_see_their_inputs() -> None:
    """The transpose-free GEMMs bypass nn.Linear.__call__, so a hook on in_proj/out_proj must make the
    operator fall back to the module call (same result)."""
    torch.manual_seed(0)
    op = make_operator()
    u = torch.randn(2, 30, 16)
    want = op(u)
    seen: list[tuple[int, ...]] = []
    op.in_proj.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    op.out_proj.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    torch.testing.assert_close(op(u), want, rtol=1e-6, atol=1e-6)
    assert seen == [(2, 30, 16), (2, 30, 16)]


@pytest.mark.parametrize("n", [1, 2, 9, 27, 128, 2000])
def test_parseval_sum_of_half_spectrum_equals_time_domain_dot(n: int) -> None:
    """The bias gradients come from rfft(a) conj(rfft(b)) over n // 2 + 1 bins: odd and even n."""
    torch.manual_seed(n)
    a, b = torch.randn(2, 3, n, dtype=torch.float64), torch.randn(2, 3, n, dtype=torch.float64)
    p = torch.fft.rfft(a) * torch.fft.rfft(b).conj()
    torch.testing.assert_close(parseval_sum(p, n), (a * b).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seq_len", [1, 5, 14, 64, 113, 1000])
def test_gated_fftconv_equals_gate_conv_gate(seq_len: int) -> None:
    """The fused order-2 core (one autograd node, gradients written into one buffer, products
    written into padded buffers, the bias gradient by Parseval) equals gate -> direct conv -> gate,
    values and all three gradients, batch of 3; odd FFT sizes (L = 1, 5, 14, 113) and even."""
    torch.manual_seed(seq_len)
    d = 4
    x = torch.randn(3, 3 * d, seq_len, requires_grad=True)
    k = torch.randn(d, seq_len, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)
    g = torch.randn(3, d, seq_len)
    y = GatedFFTConvFn.apply(x, k, bias)
    x0, x1, v = x.split(d, dim=1)
    y_ref = x0 * causal_conv_direct(v * x1, k, bias)
    tol = 1e-5 * max(1.0, math.sqrt(seq_len))  # fp32 sums of L terms, both sides
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    for got, want in zip(grads(y, g, [x, k, bias]), grads(y_ref, g, [x, k, bias])):
        torch.testing.assert_close(got, want, rtol=10 * tol, atol=10 * tol)


def test_operator_with_dropout_takes_the_unfused_path_and_still_trains() -> None:
    """Gate dropout is applied between the gates, so the fused core is skipped when it is active."""
    torch.manual_seed(0)
    op = make_operator()
    op.dropout.p = 0.5
    u = torch.randn(2, 24, 16, requires_grad=True)
    op.train()
    a, b = op(u), op(u)
    assert not torch.allclose(a, b)  # dropout is live
    a.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()
    op.eval()
    assert ((op(u) - op.forward_ref(u)).abs() <= 2 * operator_rounding_bound(op, u)).all()


def test_gated_fftconv_stores_bf16_input_as_is_and_returns_bf16_gradients() -> None:
    """Under bf16 the fused core keeps x (B, 3D, L) in bf16 for backward (no fp32 copy of the
    widest tensor) and computes in fp32: same values and gradients as fp32 inputs, to bf16 rounding."""
    torch.manual_seed(0)
    x32 = torch.randn(2, 12, 32)
    k = torch.randn(4, 32, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    x = x32.bfloat16().requires_grad_()
    saved: list[tuple[tuple[int, ...], torch.dtype]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = gated_fftconv(x, k, bias)
    assert y.dtype == torch.bfloat16
    assert ((2, 12, 32), torch.bfloat16) in saved and ((2, 12, 32), torch.float32) not in saved
    g = torch.randn(2, 4, 32)
    gx, gk, gb = torch.autograd.grad(y.float(), [x, k, bias], g)
    ref = x.detach().float().requires_grad_()
    y_ref = gated_fftconv(ref, k, bias)
    rx, rk, rb = torch.autograd.grad(y_ref, [ref, k, bias], g)
    assert gx.dtype == torch.bfloat16
    # The same x values and fp32 arithmetic; the bf16 path rounds its output, and so the gradient
    # flowing back through that cast, to bf16: the output and x's gradient are off by u_bf16 of
    # themselves, every gradient by u_bf16 of its terms' magnitude. The same allowance again covers
    # the fp32 rounding of both passes, some 1e4 times smaller.
    mags = magnitudes(lambda x, k, b: x[:, :4] * causal_conv64(x[:, 4:8] * x[:, 8:], k, b), [ref, k, bias], g)
    for got, want, mag in zip((y, gx, gk, gb), (y_ref, rx, rk, rb), mags):
        assert ((got.double() - want.double()).abs() <= 2 * UBF16 * (mag + want.double().abs())).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_layout_swapping_projections_equal_linear_and_return_gradients_in_the_input_layout(
        bias: bool, batch: int, dtype: torch.dtype) -> None:
    """in_proj / out_proj as one batched GEMM each way equal nn.Linear + transpose, values and all
    gradients (in the parameters' dtype), and hand back the input gradient contiguous in the
    input's own layout. Output, input, weight and bias gradient are sums of 6 + 1, 10, B L and
    B L products: two evaluations differ by at most 2 gamma_K times the terms' magnitude."""
    torch.manual_seed(batch)
    lin = torch.nn.Linear(6, 10, bias=bias).to(dtype)
    for fast, to_ref, shape in ((linear_channels_first, lambda x, *p: rearrange(F.linear(x, *p), "b l d -> b d l"),
                                 (batch, 17, 6)),
                                (linear_channels_last, lambda x, *p: F.linear(rearrange(x, "b d l -> b l d"), *p),
                                 (batch, 6, 17))):
        x = torch.randn(*shape, dtype=dtype, requires_grad=True)
        params = [x, *lin.parameters()]
        y, y_ref = fast(lin, x), to_ref(*params)
        assert y.is_contiguous()
        g = torch.randn_like(y)
        got, want = [y, *grads(y, g, params)], [y_ref, *grads(y_ref, g, params)]
        assert got[1].is_contiguous() and got[1].shape == x.shape
        for a, b, terms, mag in zip(got, want, (7, 10, batch * 17, batch * 17), magnitudes(to_ref, params, g)):
            assert a.dtype == dtype
            assert ((a - b).abs() <= 2 * gamma(terms, dtype) * mag).all()


def test_projections_follow_bf16_autocast_like_linear() -> None:
    """Under bf16 autocast the projections compute in bf16 as nn.Linear does; the fp32 parameters
    get fp32 gradients, an fp32 input an fp32 gradient.

    Both round x, W, b and the output gradient to bf16 alike, multiply exactly (a product of two
    bf16 values fits fp32), sum in fp32 (PyTorch's CPU bf16 GEMMs accumulate in fp32) and round a
    partial sum to bf16 at most once (nn.Linear its result, the fast path each batch's GEMM before
    an fp32 batch sum): each is within (u_bf16 + gamma_K) of its terms' magnitude of the exact sum
    of the rounded values, K = 8 + 1, 12, B L, B L for output, input, weight and bias gradient."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 12)
    x = torch.randn(2, 16, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear_channels_first(lin, x)
        y_ref = rearrange(lin(x), "b l d -> b d l")
    assert y.dtype == y_ref.dtype == torch.bfloat16
    g = torch.randn_like(y)
    params = [x, *lin.parameters()]
    rounded = [t.bfloat16() for t in params]
    mags = magnitudes(lambda x, *p: rearrange(F.linear(x, *p), "b l d -> b d l"), rounded, g.bfloat16())
    got, want = [y, *grads(y, g, params)], [y_ref, *grads(y_ref, g, params)]
    for i, (a, b, terms, mag) in enumerate(zip(got, want, (9, 12, 32, 32), mags)):
        assert i == 0 or a.dtype == b.dtype == torch.float32
        assert ((a.double() - b.double()).abs() <= 2 * (UBF16 + gamma(terms)) * mag).all()


def make_filter(num_inner_mlps: int = 2, train_freq: bool = True, modulate: bool = True, d: int = 12,
                l_max: int = 300) -> HyenaFilter:
    config = replace(HyenaConfig().filter_config, filter_order=16, num_inner_mlps=num_inner_mlps,
                     train_freq=train_freq, modulate=modulate)
    torch.manual_seed(num_inner_mlps)
    f = HyenaFilter(d, l_max, config)
    with torch.no_grad():  # the frequency differs per feature, as after training
        f.implicit_filter[1].freq.uniform_(5.0, 15.0)
    return f


def module_filter(f: HyenaFilter, seq_len: int) -> torch.Tensor:
    """The filter through the modules (autograd), in fp64 when f is: the reference of the fused one."""
    z, t = f.pos_emb(seq_len)
    z, t = z[0].to(f.bias.dtype), t.reshape(1, seq_len).to(f.bias.dtype)
    h = f.implicit_filter[-1].weight @ f.implicit_filter[:-1](z).mT
    return h * (torch.exp(-t * f.modulation.deltas.abs().reshape(-1, 1).to(h.dtype)) + f.modulation.shift) \
        if f.modulation.modulate else h


@pytest.mark.parametrize("num_inner_mlps,train_freq,modulate", [(2, True, True), (0, True, True), (1, False, True),
                                                                (2, True, False)])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_filter_equals_the_modules_in_fp64(num_inner_mlps: int, train_freq: bool, modulate: bool,
                                                 padded: bool) -> None:
    """One autograd node for the filter MLP (frequency folded into the weights, hand-written
    backward, every gradient from dp^T s and column sums) gives the modules' values and gradients,
    for any depth, with a fixed or trainable frequency, with or without decay; the padded form
    carries zeros after L and the same gradients. Values and gradients are compared with fp64
    within the rounding bounds of an fp32 evaluation (`filter_rounding_bound` and its backward)."""
    seq_len = 257
    f = make_filter(num_inner_mlps, train_freq, modulate)
    f64 = make_filter(num_inner_mlps, train_freq, modulate).double()
    f64.load_state_dict(f.state_dict())
    f64.pos_emb.z, f64.pos_emb.t = f.pos_emb.z.double(), f.pos_emb.t.double()
    n = fft_size(seq_len) if padded else None
    k = f.filter(seq_len, padded_to=n)
    assert type(k.grad_fn).__name__ == "ImplicitFilterFnBackward"
    assert k.shape == (12, n or seq_len)
    if padded:
        assert torch.all(k[:, seq_len:] == 0)
    want = module_filter(f64, seq_len)  # fp64 parameters: the module path
    g = torch.randn(12, seq_len, dtype=torch.float64)
    params = [p for p in f.parameters() if p is not f.bias]
    got_grads = torch.autograd.grad((k[:, :seq_len] * g.float()).sum(), params)
    want_grads = torch.autograd.grad((want * g).sum(), [p for p in f64.parameters() if p is not f64.bias])
    bounds = [filter_rounding_bound(f, seq_len), *filter_gradient_rounding_bounds(f, seq_len, g)]
    for got, ref, bound in zip([k[:, :seq_len], *got_grads], [want, *want_grads], bounds, strict=True):
        assert got.shape == ref.shape
        assert bound.max() < 1e-3 * ref.abs().max()  # tight enough to catch a wrong term
        assert ((got.double() - ref).abs() <= bound).all(), ((got.double() - ref).abs() / bound).max()


@pytest.mark.parametrize("padded", [False, True])
def test_implicit_filter_kernel_equals_its_reference_in_fp64(padded: bool) -> None:
    """`ops.implicit_filter` (frequency folded into the weights, hand-written backward) and
    `ops.implicit_filter_ref` (plain autograd) on the same fp64 tensors: one computation, two
    orders of the same roundings, so values and every gradient agree to fp64 rounding."""
    torch.manual_seed(0)
    seq_len, e, f_dim, d = 37, 5, 8, 6
    z = torch.randn(seq_len, e, dtype=torch.float64, requires_grad=True)
    decay = torch.rand(d, seq_len, dtype=torch.float64)
    freq = torch.empty(1, f_dim, dtype=torch.float64).uniform_(5.0, 15.0).requires_grad_()
    w_out = torch.randn(d, f_dim, dtype=torch.float64, requires_grad=True)
    linear = [torch.randn(f_dim, e, dtype=torch.float64), torch.randn(f_dim, dtype=torch.float64),
              torch.randn(f_dim, f_dim, dtype=torch.float64) / 3, torch.randn(f_dim, dtype=torch.float64)]
    linear = [t.requires_grad_() for t in linear]
    n = fft_size(seq_len) if padded else None
    k = implicit_filter(z, decay, freq, w_out, linear, padded_to=n)
    k_ref = implicit_filter_ref(z, decay, freq, w_out, linear)
    assert k.shape == (d, n or seq_len) and (not padded or torch.all(k[:, seq_len:] == 0))
    g = torch.randn(d, seq_len, dtype=torch.float64)
    inputs = [z, freq, w_out, *linear]
    torch.testing.assert_close(k[:, :seq_len], k_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads(k[:, :seq_len], g, inputs), grads(k_ref, g, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * max(1.0, want.abs().max().item()))


def test_filter_falls_back_to_the_modules_when_hooked_or_not_fp32() -> None:
    """A hook on the MLP's Sin, a layer swapped for a wrapper, or bf16 parameters take the module
    path (autograd); undone, the fused path comes back."""
    f = make_filter()
    want = f.filter(40)
    bound = 2 * filter_rounding_bound(f, 40)  # module and fused path: fp32 evaluations of one exact filter
    seen: list[int] = []
    handle = f.implicit_filter[1].register_forward_hook(lambda m, i, o: seen.append(1))
    got = f.filter(40)
    assert type(got.grad_fn).__name__ != "ImplicitFilterFnBackward" and len(seen) == 3  # shared Sin, 3 calls
    assert ((got - want).abs() <= bound).all()
    handle.remove()
    assert type(f.filter(40).grad_fn).__name__ == "ImplicitFilterFnBackward"
    # A layer swapped for a wrapper (as an adapter library would): the layout is checked again.
    inner = f.implicit_filter[2]
    f.implicit_filter[2] = torch.nn.Sequential(inner)
    got = f.filter(40)
    assert type(got.grad_fn).__name__ != "ImplicitFilterFnBackward"
    assert ((got - want).abs() <= bound).all()
    f.implicit_filter[2] = inner
    assert type(f.filter(40).grad_fn).__name__ == "ImplicitFilterFnBackward"
    assert f.bfloat16()._fusable_parts() is None


def test_decay_is_cached_per_positions_and_rebuilt_when_they_or_the_rates_change() -> None:
    f = make_filter()
    z, t = f.pos_emb(50)
    t = t.reshape(1, 50)
    a = f.modulation.decay(t)
    assert f.modulation.decay(t) is a  # same positions: reused
    assert f.modulation.decay(f.pos_emb(40)[1].reshape(1, 40)).shape == (12, 40)
    with torch.no_grad():
        f.modulation.deltas.mul_(2.0)  # in place: bumps the version counter
    b = f.modulation.decay(t)
    torch.testing.assert_close(b, torch.exp(-t * f.modulation.deltas.abs().reshape(-1, 1)) + f.modulation.shift)
    with torch.inference_mode():
        c = f.modulation.decay(t)
    assert c is not b and f.modulation.decay(t) is not c  # inference tensors never leak into autograd
    f.modulation.decay_cache_max_bytes = 0  # larger decays are built afresh each time
    f.modulation.decay(f.pos_emb(40)[1].reshape(1, 40))
    assert f.modulation.decay(t) is not f.modulation.decay(t)


@pytest.mark.parametrize("seq_len", [1, 5, 64, 113])
def test_gated_fftconv_takes_a_zero_padded_filter(seq_len: int) -> None:
    """The filter may come zero-padded to the FFT size (no padding copy in rfft): same output and
    input/bias gradients, and the filter gradient's first L entries equal the unpadded one."""
    torch.manual_seed(seq_len)
    d, n = 4, fft_size(seq_len)
    x = torch.randn(2, 3 * d, seq_len, requires_grad=True)
    k = torch.randn(d, seq_len, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)
    k_pad = F.pad(k.detach(), (0, n - seq_len)).requires_grad_()
    g = torch.randn(2, d, seq_len)
    y, y_pad = GatedFFTConvFn.apply(x, k, bias), GatedFFTConvFn.apply(x, k_pad, bias)
    torch.testing.assert_close(y_pad, y, rtol=1e-6, atol=1e-6)
    gx, gk, gb = grads(y, g, [x, k, bias])
    px, pk, pb = grads(y_pad, g, [x, k_pad, bias])
    assert pk.shape == (d, n)
    for got, want in ((px, gx), (pk[:, :seq_len], gk), (pb, gb)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="neither the input length"):
        GatedFFTConvFn.apply(x, F.pad(k, (0, 1)) if n > seq_len + 1 else k[:, :0], bias)


class PoisonedPool(BufferPool):
    """Every buffer it hands out is NaN first: whatever reads one before writing it shows."""

    def empty(self, shape, dtype, device):  # type: ignore[no-untyped-def]
        t = super().empty(shape, dtype, device)
        return t.fill_(float("nan")) if t.is_floating_point() or t.is_complex() else t


def test_reused_buffers_give_the_same_training_steps(monkeypatch) -> None:
    """Every Function buffer drawn from the pool (min_bytes 0) and NaN-filled: three steps of a
    small LM equal those on fresh buffers bit for bit, and the pool stops growing after the first."""
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=70))
    ids = [torch.randint(7, 11, (2, 64)) for _ in range(3)]

    def steps() -> list[list[torch.Tensor]]:
        torch.manual_seed(1)  # the same dropout masks
        out = []
        for x in ids:
            model.zero_grad(set_to_none=True)
            loss = model(x[:, :-1], targets=x[:, 1:]).loss
            loss.backward()
            out.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
            held.append(buffers_module.buffer_pool.held_bytes())
        return out

    held: list[int] = []
    plain = BufferPool()
    plain.enabled = False
    monkeypatch.setattr(buffers_module, "buffer_pool", plain)
    want = steps()
    monkeypatch.setattr(buffers_module, "buffer_pool", PoisonedPool(min_bytes=0))
    held.clear()
    got = steps()
    for g_step, w_step in zip(got, want):
        for g, w in zip(g_step, w_step):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert held[0] > 0 and held[0] == held[1] == held[2]


def test_reused_buffers_survive_retain_graph_and_in_place_outputs(monkeypatch) -> None:
    """A graph kept for a second backward keeps its saved buffers out of other steps' reach; an
    operator output (a pooled buffer) may be modified in place."""
    monkeypatch.setattr(buffers_module, "buffer_pool", PoisonedPool(min_bytes=0))
    torch.manual_seed(1)
    op = make_operator()
    u = torch.randn(2, 40, 16, requires_grad=True)
    g = torch.randn(2, 40, 16)
    (once,) = torch.autograd.grad(op(u), u, g)
    y = op(u)
    y.backward(g, retain_graph=True)
    other = torch.randn(2, 40, 16, requires_grad=True)
    op(other).backward(g)  # would take y's saved buffers if they counted as free
    y.backward(g)
    torch.testing.assert_close(u.grad, 2 * once, rtol=1e-6, atol=1e-6)
    (twice,) = torch.autograd.grad(op(u).mul_(2), u, g)
    torch.testing.assert_close(twice, 2 * once, rtol=1e-6, atol=1e-6)


def test_mlp_kernel_equals_its_reference_in_fp64() -> None:
    """`ops.mlp` (one node, pooled buffers, GELU gradient in place) = fc1 -> tanh-GELU -> fc2
    through autograd: values and all five gradients, in fp64 (the same GEMMs and GELU kernels)."""
    torch.manual_seed(0)
    x = torch.randn(2, 33, 8, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(32, 8), torch.randn(32), torch.randn(8, 32), torch.randn(8)]
    params = [p.double().requires_grad_() for p in params]
    g = torch.randn(2, 33, 8, dtype=torch.float64)
    got, want = mlp(x, *params), mlp_ref(x, *params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(got, g, [x, *params]), grads(want, g, [x, *params])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gelu_from_a_sigmoid_equals_tanh_gelu_and_its_slope_to_fp32_rounding(monkeypatch) -> None:
    """`ops.mlp.gelu_tanh_and_slope` = tanh-GELU and its derivative (fp64 autograd through
    F.gelu), over row slices with a partial last one, from 0 and +-1e-30 to +-1e18. The bounds
    follow its passes: a few roundings of x sigmoid(u) (8 eps |x|); the slope s + x s (1 - s) u'
    inherits s's rounding near 1 scaled by |x| u' (8 eps (1 + |x| u')). ATen's kernels meet the
    same bounds, and the slope stays finite where h^2 does."""
    mlp_module = importlib.import_module("hyenadna.ops.mlp")
    monkeypatch.setattr(mlp_module, "GELU_SLICE_BYTES", 7 * 24 * 4)  # 7 rows: 3 slices of 20 rows
    torch.manual_seed(0)
    h = torch.cat([torch.randn(12, 24) * 3, torch.randn(4, 24) * 30,
                   torch.tensor([0.0, 1e-30, -1e-30, 1e6, -1e6, 1e12, -1e12, 1e18, -1e18, 8.0, -8.0, -5.5]
                                * 2).view(1, 24),
                   torch.linspace(-12, 12, 72).view(3, 24)])
    a, d = torch.empty_like(h), torch.empty_like(h)
    mlp_module.gelu_tanh_and_slope(h, a, d)
    h64 = h.double().requires_grad_()
    want = F.gelu(h64, approximate="tanh")
    (slope,) = torch.autograd.grad(want.sum(), h64)
    eps = torch.finfo(torch.float32).eps / 2
    x = h.double().abs()
    du = 2 * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)
    assert torch.isfinite(a).all() and torch.isfinite(d).all()
    for got, ref in ((a, want), (F.gelu(h, approximate="tanh"), want)):
        assert bool(((got.double() - ref).abs() <= 8 * eps * x).all())
    aten_slope = torch.ops.aten.gelu_backward(torch.ones_like(h), h, approximate="tanh")
    finite = x < 1e12  # ATen's own slope is NaN from |h| ~ 1e13 on (its 0 * inf)
    for got in (d, aten_slope):
        err = (got.double() - slope).abs()[finite]
        assert bool((err <= 8 * eps * (1 + x * du)[finite]).all())
    assert bool((d[~finite] == slope[~finite].float()).all())  # 1 or 0 exactly


@pytest.mark.parametrize("chunk_rows", [10, 66, 1000])
def test_mlp_kernel_in_row_chunks_equals_its_reference(chunk_rows: int, monkeypatch) -> None:
    """The fp32 route of `ops.mlp`, its products in row chunks (oneDNN's outputs kept under glibc's
    mmap threshold: here 10 rows, a last partial chunk of 6; one chunk of exactly all 66 rows;
    one larger than the input) = the fp64 reference: values and all five gradients, within the
    fp32 rounding of sums of at most 66 unit-scale terms (gamma_66 ~ 4e-6 of their magnitudes)."""
    mlp_module = importlib.import_module("hyenadna.ops.mlp")  # the package's `mlp` is the function

    torch.manual_seed(0)
    inner = 32
    monkeypatch.setattr(mlp_module, "MLP_CHUNK_BYTES", chunk_rows * inner * 4)
    x = torch.randn(2, 33, 8, requires_grad=True)
    params = [(torch.randn(inner, 8) / 3).requires_grad_(), torch.randn(inner).requires_grad_(),
              (torch.randn(8, inner) / 6).requires_grad_(), torch.randn(8).requires_grad_()]
    g = torch.randn(2, 33, 8)
    got = mlp(x, *params)
    assert type(got.grad_fn).__name__ == "MlpFnBackward"
    x64, params64 = x.detach().double().requires_grad_(), [p.detach().double().requires_grad_() for p in params]
    want = mlp_ref(x64, *params64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(got, g, [x, *params]), grads(want, g.double(), [x64, *params64])):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_model_mlp_takes_the_kernel_with_grad_and_the_modules_otherwise() -> None:
    """The block's MLP runs `MlpFn` when training in fp32 and the modules when hooked, without
    grad, under autocast or with use_fast_path=False; the fp32 results agree to rounding."""
    torch.manual_seed(0)
    block_mlp = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=1, d_inner=64, l_max=40)).backbone.layers[0].mlp
    x = torch.randn(2, 20, 16, requires_grad=True)
    y = block_mlp(x)
    assert type(y.grad_fn).__name__ == "MlpFnBackward"
    block_mlp.use_fast_path = False
    y_ref = block_mlp(x)
    assert type(y_ref.grad_fn).__name__ != "MlpFnBackward"
    torch.testing.assert_close(y, y_ref, rtol=4 * gamma(64), atol=1e-6)
    g = torch.randn_like(y)
    for a, b in zip(grads(y, g, [x, *block_mlp.parameters()]), grads(y_ref, g, [x, *block_mlp.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    block_mlp.use_fast_path = True
    handle = block_mlp.fc1.register_forward_hook(lambda m, i, o: None)
    assert type(block_mlp(x).grad_fn).__name__ != "MlpFnBackward"
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block_mlp(x).dtype == torch.bfloat16


@pytest.mark.parametrize("transposed", [False, True])
def test_onednn_products_equal_torch_mm_to_fp32_rounding(transposed: bool, monkeypatch) -> None:
    """`ops.gemm.matmul_nt` (oneDNN where available) = a @ b^T + bias within the fp32 bound of a
    K-term sum, on contiguous operands and on transposed views; other dtypes take torch.mm."""
    from hyenadna.ops import gemm

    torch.manual_seed(0)
    k = 300
    a = torch.randn(k, 70).mT if transposed else torch.randn(70, k)
    b = torch.randn(k, 50).mT if transposed else torch.randn(50, k)
    bias = torch.randn(50)
    exact = a.double() @ b.double().mT + bias.double()
    bound = gamma(k + 1) * (a.double().abs() @ b.double().abs().mT + bias.double().abs())
    for on in (True, False):
        monkeypatch.setattr(gemm, "use_onednn", on and gemm.onednn_available())
        got = gemm.matmul_nt(a, b, bias)
        assert got.shape == (70, 50) and got.dtype == torch.float32
        assert bool(((got.double() - exact).abs() <= bound).all())
    got64 = gemm.matmul_nt(a.double(), b.double(), bias.double())
    torch.testing.assert_close(got64, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m, n, a_transposed", [(70, 50, False), (50, 70, False), (70, 50, True)])
def test_weight_gradient_products_equal_the_exact_sum_to_fp32_rounding(m: int, n: int, a_transposed: bool,
                                                                        monkeypatch) -> None:
    """`ops.gemm.matmul_tn(a, b)` = a^T b within the fp32 bound of a K-term sum on every route:
    oneDNN with the operands either way round (two row-major operands with M > N: b^T a,
    transposed; M > N with a^T row-major already: a^T b), torch.mm; the result is a contiguous
    (M, N) tensor."""
    from hyenadna.ops import gemm

    torch.manual_seed(0)
    k = 300
    a = torch.randn(m, k).mT if a_transposed else torch.randn(k, m)
    b = torch.randn(k, n)
    exact = a.double().mT @ b.double()
    bound = gamma(k) * (a.double().abs().mT @ b.double().abs())
    for onednn, for_tn in ((True, True), (True, False), (False, True)):
        monkeypatch.setattr(gemm, "use_onednn", onednn and gemm.onednn_available())
        monkeypatch.setattr(gemm, "onednn_for_tn", for_tn)
        got = gemm.matmul_tn(a, b)
        assert got.shape == (m, n) and got.is_contiguous() and got.dtype == torch.float32
        assert bool(((got.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("batch", [1, 3])
def test_projections_and_mlp_agree_on_both_product_routes(batch: int, monkeypatch) -> None:
    """Training steps of a small LM with the products through oneDNN and through torch.mm give
    the same loss and gradients to fp32 rounding (one route is not a different model)."""
    from hyenadna.ops import gemm

    if not gemm.onednn_available():
        pytest.skip("no oneDNN in this PyTorch")
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=64, l_max=70))
    x = torch.randint(7, 11, (batch, 65))
    out = []
    for on in (True, False):
        monkeypatch.setattr(gemm, "use_onednn", on)
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        loss = model(x[:, :-1], targets=x[:, 1:]).loss
        loss.backward()
        out.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
