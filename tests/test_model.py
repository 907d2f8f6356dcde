"""Properties of the HyenaDNA model: causality, FFT conv == direct conv, sizes, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hyenadna.model as model_module
from hyenadna.model import (
    HyenaConfig,
    HyenaDNAForCausalLM,
    HyenaDNAForSequenceClassification,
    HyenaOperator,
    count_parameters,
    pool_hidden,
    positional_features,
)
from hyenadna.ops import causal_conv_direct, fftconv


def tiny_config(**overrides) -> HyenaConfig:
    base = dict(d_model=32, n_layer=2, d_inner=64, l_max=130, embed_dropout=0.0)
    return HyenaConfig(**{**base, **overrides})


def operator(d: int = 16, l_max: int = 64, order: int = 2) -> HyenaOperator:
    return HyenaOperator.from_config(tiny_config(d_model=d, l_max=l_max, hyena_order=order))


# ---------------------------------------------------------------- FFT convolution


@pytest.mark.parametrize("seq_len", [1, 2, 7, 64, 127, 128, 301])
def test_fftconv_equals_direct_causal_convolution(seq_len: int) -> None:
    torch.manual_seed(seq_len)
    u, k, bias = torch.randn(3, 5, seq_len, dtype=torch.float64), torch.randn(5, seq_len, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    want = causal_conv_direct(u, k, bias)
    got = fftconv(u, k, bias)
    # fftconv computes in fp32 by design; compare at fp32 precision against the fp64 reference
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4 * math.sqrt(seq_len))


def test_direct_causal_conv_is_the_loop() -> None:
    """The reference itself against the definition y_t = sum_{s<=t} k_s u_{t-s} + b u_t."""
    torch.manual_seed(0)
    u, k, bias = torch.randn(1, 2, 9), torch.randn(2, 9), torch.randn(2)
    y = torch.zeros_like(u)
    for t in range(9):
        for s in range(t + 1):
            y[..., t] += k[:, s] * u[..., t - s]
        y[..., t] += bias * u[..., t]
    torch.testing.assert_close(causal_conv_direct(u, k, bias), y, rtol=1e-5, atol=1e-5)


def test_fftconv_runs_in_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    u, k, bias = torch.randn(2, 4, 50), torch.randn(4, 50), torch.randn(4)
    seen: list[torch.dtype] = []
    real_rfft = torch.fft.rfft

    def spy(x, *a, **kw):
        seen.append(x.dtype)
        return real_rfft(x, *a, **kw)

    torch.fft.rfft = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fftconv(u.bfloat16(), k, bias)
    finally:
        torch.fft.rfft = real_rfft
    assert seen and all(d == torch.float32 for d in seen)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), causal_conv_direct(u.bfloat16().float(), k, bias), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- causality


def short_conv_look_aheads(op: HyenaOperator) -> list[str]:
    """Where the short conv as the operator runs it sees later inputs: [] when it is causal.

    It is `model_module.shortconv` (looked up at call time, as the operator does) with the
    operator's weights, forward and backward, and the operator's no-grad in_proj + short conv in
    one and in several slices. Every output is its own k multiply-adds (in_proj: one dot product
    per position), so the checks are exact: a change at input s leaves earlier outputs bit for bit
    and changes output s; for a one-hot output gradient at t, the input gradient is tap k-1-(t-s)
    at inputs t-k+1..t and zero elsewhere, and tap j's weight gradient is the input k-1-j back.
    """
    torch.manual_seed(0)
    conv = model_module.shortconv
    w, b = op.short_filter.weight, op.short_filter.bias
    channels, taps = w.shape[0], w.shape[-1]
    seq_len, s = 20, 10
    found: list[str] = []
    x = torch.randn(2, channels, seq_len)
    x2 = x.clone()
    x2[..., s] += 1.0
    with torch.no_grad():
        y, y2 = conv(x, w, b), conv(x2, w, b)
    if not (torch.equal(y[..., :s], y2[..., :s]) and (y[..., s] != y2[..., s]).all()):
        found.append("forward")
    for t in (0, 7, seq_len - 1):
        xt = x[:1].clone().requires_grad_()
        out = conv(xt, w, b)
        g = torch.zeros_like(out)
        g[..., t] = 1.0
        gx, gw = torch.autograd.grad(out, (xt, w), g)
        want_gx, want_gw = torch.zeros_like(gx), torch.zeros_like(gw)
        for lag in range(min(taps, t + 1)):
            want_gx[0, :, t - lag] = w[:, 0, taps - 1 - lag].detach()
            want_gw[:, 0, taps - 1 - lag] = x[0, :, t - lag]
        if not torch.equal(gx, want_gx) and "input gradient" not in found:
            found.append("input gradient")
        if not torch.equal(gw, want_gw) and "weight gradient" not in found:
            found.append("weight gradient")
    u = torch.randn(2, seq_len, op.d_model)
    u2 = u.clone()
    u2[:, s] += 1.0
    whole = op.inference_chunk_elements
    try:  # one slice, then slices of `taps` positions (s inside one of them)
        for chunk in (whole, 2 * op.in_proj.out_features * taps):
            op.inference_chunk_elements = chunk
            with torch.no_grad():
                a, c = op._project_in_slices(u), op._project_in_slices(u2)
            if not (torch.equal(a[..., :s], c[..., :s]) and (a[..., s] != c[..., s]).all()):
                found.append(f"no-grad in_proj + short conv, chunk {chunk}")
    finally:
        op.inference_chunk_elements = whole
    return found


def look_ahead_short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A short conv one step off (output t sees inputs t-k+2..t+1): what the causality check must catch."""
    taps = weight.shape[-1]
    return F.conv1d(x, weight, bias, padding=taps - 1, groups=x.shape[1])[..., 1:x.shape[-1] + 1]


def test_short_filter_is_causal() -> None:
    assert short_conv_look_aheads(operator()) == []


def test_short_filter_causality_check_catches_a_conv_that_looks_ahead(monkeypatch) -> None:
    monkeypatch.setattr(model_module, "shortconv", look_ahead_short_conv)
    op = operator()
    assert short_conv_look_aheads(op) == [
        "forward", "input gradient", "weight gradient", "no-grad in_proj + short conv, chunk 16777216",
        f"no-grad in_proj + short conv, chunk {2 * op.in_proj.out_features * 3}"]


@pytest.mark.parametrize("order", [2, 3])
def test_operator_is_causal(order: int) -> None:
    torch.manual_seed(0)
    op = operator(order=order).eval()
    u = torch.randn(2, 40, 16)
    for t in (0, 17, 38):
        u2 = u.clone()
        u2[:, t + 1] = torch.randn(2, 16)
        y1, y2 = op(u), op(u2)
        torch.testing.assert_close(y1[:, : t + 1], y2[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(y1[:, t + 1], y2[:, t + 1])


def test_model_is_causal() -> None:
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(tiny_config()).eval()
    ids = torch.randint(7, 12, (2, 100))
    logits = model(ids).logits
    for t in (0, 50, 98):
        ids2 = ids.clone()
        ids2[:, t + 1] = 7 + (ids2[:, t + 1] - 7 + 1) % 4
        logits2 = model(ids2).logits
        torch.testing.assert_close(logits[:, : t + 1], logits2[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(logits[:, t + 1], logits2[:, t + 1])


# ---------------------------------------------------------------- sizes, keys, buffers


@pytest.mark.parametrize("name,expected", [
    ("tiny-1k", 436_096), ("tiny-1k-d256", 1_641_088), ("tiny-16k", 436_096),
    ("small-32k", 3_277_568), ("medium-160k", 6_550_528), ("large-1m", 6_550_528)])
def test_preset_parameter_counts(name: str, expected: int) -> None:
    config = HyenaConfig.preset(name, l_max=64)  # l_max does not change the parameter count
    model = HyenaDNAForCausalLM(config)
    assert count_parameters(model) == expected
    assert model.lm_head.weight is model.backbone.embeddings.word_embeddings.weight
    assert model.lm_head.weight.shape == (16, config.d_model)


def test_presets_have_released_lengths() -> None:
    assert [HyenaConfig.preset(n).l_max for n in ("tiny-1k", "tiny-16k", "small-32k", "medium-160k", "medium-450k", "large-1m")] == [
        1026, 16386, 32770, 160002, 450002, 1000002]
    assert HyenaConfig.preset("tiny-16k-d128") == HyenaConfig.preset("tiny-16k")


def test_state_dict_holds_no_recomputable_buffers() -> None:
    model = HyenaDNAForCausalLM(tiny_config())
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.endswith((".z", ".t", ".deltas"))]
    # the official layout: one shared sine frequency listed at indices 1, 3, 5
    layer0 = "backbone.layers.0.mixer.filter_fn.implicit_filter"
    assert {f"{layer0}.{i}.freq" for i in (1, 3, 5)} <= set(keys)
    assert len(keys) == 1 + 25 * 2 + 2 + 1  # embedding, 25 per layer, ln_f (2), tied lm_head


def test_positional_features_match_definition() -> None:
    l_max = 1026
    z, t = positional_features(l_max, 5)
    i = torch.arange(l_max, dtype=torch.float64)
    w = 2 * math.pi * i / l_max
    f = torch.tensor([1e-4, 1.0], dtype=torch.float64)
    want = torch.stack([i / (l_max - 1), torch.cos(f[0] * w), torch.cos(f[1] * w), -torch.sin(f[0] * w), -torch.sin(f[1] * w)], -1)
    torch.testing.assert_close(z[0].double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(t[0, :, 0].double(), i / (l_max - 1), rtol=0, atol=1e-6)


def test_buffers_stay_fp32_after_half_cast() -> None:
    model = HyenaDNAForCausalLM(tiny_config()).to(torch.bfloat16)
    filt = model.backbone.layers[0].mixer.filter_fn
    assert filt.pos_emb.z.dtype == torch.float32 and filt.modulation.deltas.dtype == torch.float32
    assert filt.implicit_filter[0].weight.dtype == torch.bfloat16


def test_init_follows_gpt2_recipe() -> None:
    torch.manual_seed(0)
    config = HyenaConfig.preset("tiny-1k-d256")
    model = HyenaDNAForCausalLM(config)
    layer = model.backbone.layers[0]
    assert abs(layer.mixer.in_proj.weight.std().item() - 0.02) < 0.002
    rescaled = 0.02 / math.sqrt(2 * config.n_layer)
    assert abs(layer.mixer.out_proj.weight.std().item() - rescaled) < 0.002
    assert abs(layer.mlp.fc2.weight.std().item() - rescaled) < 0.001
    assert torch.all(layer.mlp.fc1.bias == 0)
    assert torch.all(layer.mixer.filter_fn.implicit_filter[1].freq == 10.0)
    assert abs(layer.mixer.filter_fn.bias.std().item() - 1.0) < 0.2  # randn, as the official code


# ---------------------------------------------------------------- training behaviour


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(tiny_config(hyena_order=3))
    ids = torch.randint(7, 12, (2, 64))
    model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_gradient_checkpointing_changes_neither_outputs_nor_keys() -> None:
    torch.manual_seed(0)
    plain = HyenaDNAForCausalLM(tiny_config())
    ckpt = HyenaDNAForCausalLM(tiny_config(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    ids = torch.randint(7, 12, (2, 64))
    out_plain = plain(ids[:, :-1], targets=ids[:, 1:])
    out_ckpt = ckpt(ids[:, :-1], targets=ids[:, 1:])
    torch.testing.assert_close(out_plain.logits, out_ckpt.logits)
    out_plain.loss.backward()
    out_ckpt.loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_loss_ignores_padding_targets() -> None:
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(tiny_config()).eval()
    ids = torch.randint(7, 11, (1, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    full = model(inputs, targets=targets)
    targets[:, 20:] = -100
    part = model(inputs, targets=targets)
    want = nn.functional.cross_entropy(full.logits[0, :20], ids[0, 1:21])
    torch.testing.assert_close(part.loss, want)


def test_bf16_autocast_forward_runs() -> None:
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(tiny_config()).eval()
    ids = torch.randint(7, 12, (2, 64))
    ref = model(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids).logits
    assert torch.isfinite(out).all()
    assert (out.float().softmax(-1) - ref.softmax(-1)).abs().max() < 0.05


# ---------------------------------------------------------------- errors


def test_over_length_input_is_rejected() -> None:
    model = HyenaDNAForCausalLM(tiny_config(l_max=50))
    with pytest.raises(ValueError, match="exceeds the model's l_max=50"):
        model(torch.randint(7, 12, (1, 51)))
    with pytest.raises(ValueError, match="soft-prompt"):
        model(torch.randint(7, 12, (1, 40)), prefix_embeds=torch.zeros(11, 32))


@pytest.mark.parametrize("bad", [
    dict(d_model=0), dict(n_layer=-1), dict(l_max=1), dict(emb_dim=4), dict(hyena_order=1),
    dict(embed_dropout=1.5), dict(activation_freq=0.0), dict(shift=float("nan")), dict(d_model=2.5),
    dict(pad_token_id=99), dict(decay_target=2.0)])
def test_bad_config_values_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        tiny_config(**bad)


def test_unknown_config_keys_and_presets_raise() -> None:
    with pytest.raises(ValueError, match="unknown HyenaConfig field.*d_modle"):
        HyenaConfig.from_dict({"d_modle": 128})
    with pytest.raises(ValueError, match="unknown preset"):
        HyenaConfig.preset("huge-10m")
    assert HyenaConfig.from_dict(HyenaConfig.preset("small-32k").to_dict()) == HyenaConfig.preset("small-32k")


def test_bad_input_ids_raise() -> None:
    model = HyenaDNAForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="shape"):
        model(torch.randint(7, 12, (10,)))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        model(torch.full((1, 5), 16))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 5))


# ---------------------------------------------------------------- heads and pooling


def test_mean_pooling_ignores_padding_on_either_side() -> None:
    hidden = torch.randn(2, 6, 4)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    left = right.flip(1)
    want = torch.stack([hidden[0, :3].mean(0), hidden[1, :5].mean(0)])
    torch.testing.assert_close(pool_hidden(hidden, "mean", right), want)
    want_left = torch.stack([hidden[0, 3:].mean(0), hidden[1, 1:].mean(0)])
    torch.testing.assert_close(pool_hidden(hidden, "mean", left), want_left)
    torch.testing.assert_close(pool_hidden(hidden, "last", right), torch.stack([hidden[0, 2], hidden[1, 4]]))
    torch.testing.assert_close(pool_hidden(hidden, "first", left), torch.stack([hidden[0, 3], hidden[1, 1]]))
    torch.testing.assert_close(pool_hidden(hidden, "last", left), hidden[:, -1])


def test_classifier_right_padding_does_not_change_prediction() -> None:
    """The model is causal, so right padding never reaches the real positions."""
    torch.manual_seed(0)
    model = HyenaDNAForSequenceClassification(tiny_config(), num_labels=3, pooling="mean").eval()
    ids = torch.randint(7, 11, (1, 20))
    alone = model(ids).logits
    padded = torch.cat([ids, torch.full((1, 7), 4)], 1)
    mask = torch.cat([torch.ones(1, 20), torch.zeros(1, 7)], 1).long()
    torch.testing.assert_close(model(padded, attention_mask=mask).logits, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("problem,labels", [
    ("single_label", torch.tensor([0, 2])), ("multi_label", torch.tensor([[1, 0, 1], [0, 0, 1]])),
    ("regression", torch.randn(2, 3))])
def test_classifier_losses(problem: str, labels: torch.Tensor) -> None:
    model = HyenaDNAForSequenceClassification(tiny_config(), num_labels=3, problem_type=problem)
    out = model(torch.randint(7, 11, (2, 16)), labels=labels)
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_soft_prompt_positions_are_dropped() -> None:
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(tiny_config()).eval()
    ids = torch.randint(7, 11, (2, 20))
    prompt = torch.randn(5, 32) * 0.02
    out = model(ids, prefix_embeds=prompt)
    assert out.logits.shape == (2, 20, 16)
    assert not torch.allclose(out.logits, model(ids).logits)
