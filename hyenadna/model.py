"""The HyenaDNA model in plain PyTorch, read top to bottom.

Implicit filter -> Hyena operator -> block -> backbone -> heads; the knobs are
`hyenadna.config.HyenaConfig`. The kernels each layer calls (FFT long convolution, short
convolution, projections, the filter MLP) are in `hyenadna.ops`, each fast autograd Function
beside its plain reference; `use_fast_path=False` runs the model on the references. Module and
parameter names follow the official HyenaDNA code (HazyResearch/hyena-dna) so that the released
checkpoints map onto this model through a fixed key table (`hyenadna.checkpoint`). Buffers that are pure functions of the config (positional
features `z`, `t` and decay rates `deltas`) are recomputed and never stored in our checkpoints.

Shape legend:
    B  batch              L  sequence length (tokens)       D  model width (d_model)
    I  MLP width (d_inner) O  Hyena order (2 in every release)
    E  positional feature width (emb_dim, 5)                F  filter-MLP width (filter_order, 64)
    P  soft-prompt length  V  padded vocabulary (16)         C  number of labels
    T  positions a decoding state holds (prompt + new tokens)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hyenadna.checkpoint import PretrainedMixin
from hyenadna.config import FilterConfig, HyenaConfig
from hyenadna.ops import (
    fft_size,
    fftconv,
    fftconv_inference,
    fftconv_ref,
    gated_fftconv,
    hooked,
    hyena_operator_ref,
    implicit_filter,
    linear_channels_first,
    linear_channels_last,
    mlp,
    shortconv,
    shortconv_ref,
)
from hyenadna.ops.common import (
    DECAY_CACHE_MAX_BYTES,
    INFERENCE_CHUNK_ELEMENTS,
    INFERENCE_CHUNK_POSITIONS,
    INFERENCE_CHUNK_TOKENS,
    SPECTRUM_CACHE_MAX_BYTES,
    autocast_off,
)

PoolingMode = Literal["last", "first", "mean"]
ProblemType = Literal["single_label", "multi_label", "regression"]


@dataclass
class HyenaOutput:
    """What the heads return: logits, the loss when targets/labels were given, hidden states on request."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: Tensor | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------
# Implicit filter: positional features -> sine MLP -> exponential decay
# --------------------------------------------------------------------------------------------


def positional_features(l_max: int, emb_dim: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """z (1, l_max, E) = [t, cos(f w), -sin(f w)] and t (1, l_max, 1), in fp32.

    t_i = i / (l_max - 1), w_i = 2 pi i / l_max, f = linspace(1e-4, bands - 1, bands): the
    official features, computed in the same fp32 order so released weights see the same inputs.
    """
    t = torch.linspace(0, 1, l_max, device=device)[None, :, None]
    bands = (emb_dim - 1) // 2
    t_rescaled = torch.linspace(0, l_max - 1, l_max, device=device)[None, :, None]
    w = 2 * math.pi * t_rescaled / l_max
    f = torch.linspace(1e-4, bands - 1, bands, device=device)[None, None]
    angle = f * w  # (1, l_max, bands)
    z = torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1)
    return z, t


def decay_rates(d: int, fast_decay_pct: float, slow_decay_pct: float, target: float,
                device: torch.device | None = None) -> Tensor:
    """deltas (1, 1, D): per-channel rates so exp(-t |delta|) reaches `target` between 30% and 150% of l_max."""
    max_decay = math.log(target) / fast_decay_pct
    min_decay = math.log(target) / slow_decay_pct
    return torch.linspace(min_decay, max_decay, d, device=device)[None, None]


class PositionalEmbedding(nn.Module):
    """Holds the positional features as non-persistent fp32 buffers (recomputed, never saved)."""

    def __init__(self, emb_dim: int, l_max: int) -> None:
        super().__init__()
        self.emb_dim, self.l_max = emb_dim, l_max
        z, t = positional_features(l_max, emb_dim)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # model.half()/bfloat16() would round t = i/(l_max-1) to 8 bits; these are pure
        # functions of the config, so rebuild them in fp32 on whatever device they moved to.
        super()._apply(fn, recurse)
        if self.z.dtype != torch.float32:
            self.z, self.t = positional_features(self.l_max, self.emb_dim, device=self.z.device)
        return self

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """-> z (1, L, E), t (1, L, 1)."""
        return self.z[:, :seq_len], self.t[:, :seq_len]


class ExponentialModulation(nn.Module):
    """h * (exp(-t |delta|) + shift): each channel decays at its own rate (paper eq. 3)."""

    def __init__(self, d: int, fast_decay_pct: float, slow_decay_pct: float, target: float,
                 shift: float, modulate: bool) -> None:
        super().__init__()
        self.shift, self.modulate = shift, modulate
        self.decay_args = (d, fast_decay_pct, slow_decay_pct, target)
        self.register_buffer("deltas", decay_rates(*self.decay_args), persistent=False)
        # (key, decay) of the last call: the decay is a constant of the positions, rebuilt only
        # when they or the rates change.
        self._decay_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self.decay_cache_max_bytes = DECAY_CACHE_MAX_BYTES

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        if self.deltas.dtype != torch.float32:
            self.deltas = decay_rates(*self.decay_args, device=self.deltas.device)
        self._decay_cache = None
        return self

    def decay(self, t: Tensor) -> Tensor | None:
        """t (1, L) -> exp(-t |delta|) + shift (D, L) in fp32, or None without modulation. It takes
        no gradient; the result is shared between calls with the same positions, so callers must
        not modify it."""
        if not self.modulate:
            return None
        # Tensors made under inference_mode cannot be saved for backward: never reused outside it.
        key = (t.data_ptr(), t.shape, t.device, t._version, self.deltas.data_ptr(), self.deltas._version, self.shift,
               torch.is_inference_mode_enabled())
        if self._decay_cache is not None and self._decay_cache[0] == key:
            return self._decay_cache[1]
        decay = torch.mul(t, rearrange(self.deltas.abs(), "1 1 d -> d 1")).neg_().exp_().add_(self.shift)
        small = decay.numel() * decay.element_size() <= self.decay_cache_max_bytes
        self._decay_cache = (key, decay) if small else None
        return decay

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        """t (1, L), h (D, L) -> (D, L): channels first, the layout of the FFT convolution."""
        decay = self.decay(t)
        return h if decay is None else h * decay


class Sin(nn.Module):
    """sin(freq * x) with a trainable per-feature frequency (one module shared by the filter MLP)."""

    def __init__(self, dim: int, w: float, train_freq: bool) -> None:
        super().__init__()
        freq = w * torch.ones(1, dim)
        if train_freq:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., F) -> (..., F)."""
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Implicit long filter h = MLP(z) * decay, plus the per-channel skip bias of the long conv.

    The filter is generated in fp32 with autocast off: sin(10 * x) of bf16 activations is noise,
    and the MLP costs O(L F^2) once per step, independent of the batch.
    """

    def __init__(self, d: int, l_max: int, config: FilterConfig) -> None:
        super().__init__()
        c = config
        self.d, self.l_max = d, l_max
        self.bias = nn.Parameter(torch.randn(d))
        self.pos_emb = PositionalEmbedding(c.emb_dim, l_max)
        # One Sin instance at indices 1, 3, 5: the official MLP shares a single `freq` parameter,
        # which is why its state dict lists implicit_filter.{1,3,5}.freq.
        act = Sin(c.filter_order, c.activation_freq, c.train_freq)
        layers: list[nn.Module] = [nn.Linear(c.emb_dim, c.filter_order), act]
        for _ in range(c.num_inner_mlps):
            layers += [nn.Linear(c.filter_order, c.filter_order), act]
        layers.append(nn.Linear(c.filter_order, d, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d, c.fast_decay_pct, c.slow_decay_pct, c.decay_target, c.shift,
                                                c.modulate)
        # The layer tuple `_fusable_parts` last checked, and whether it is the fusable chain.
        self._fusable_layers: tuple[nn.Module, ...] = ()
        self._fusable_ok = False
        # (key, rfft of the filter) of the last inference call; see `spectrum`. Not state.
        self._spectrum_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self.spectrum_cache_max_bytes = SPECTRUM_CACHE_MAX_BYTES
        self.inference_chunk_positions = INFERENCE_CHUNK_POSITIONS

    def train(self, mode: bool = True) -> HyenaFilter:
        """Switch mode; any cached spectrum is dropped (training will change the parameters)."""
        self._spectrum_cache = None
        return super().train(mode)

    def filter_ref(self, seq_len: int) -> Tensor:
        """The filter for the first `seq_len` positions through the modules and autograd, (D, L)
        fp32: the reference `filter` is held to."""
        with autocast_off(self.bias.device.type):
            z, t = self.pos_emb(seq_len)
            return self._module_filter(z[0].to(self.bias.dtype), t[:, :, 0])

    def filter(self, seq_len: int, padded_to: int | None = None) -> Tensor:
        """The long filter for the first `seq_len` positions: (D, L) in fp32, or (D, padded_to) with
        zeros after position L (the input the FFT convolution transforms; the fused filter writes
        straight into it).

        The fp32 chain this module builds runs as one autograd node (`hyenadna.ops.implicit_filter`);
        anything else (hooks, adapters, other dtypes) through the modules. Without grad, positions
        are processed in slices (the MLP and the decay are per position).
        """
        with autocast_off(self.bias.device.type):
            z, t = self.pos_emb(seq_len)
            z, t = z[0].to(self.bias.dtype), t[:, :, 0]  # (L, E), (1, L)
            if padded_to is not None and padded_to < seq_len:
                raise ValueError(f"padded_to={padded_to} is shorter than the filter ({seq_len} positions)")
            if torch.is_grad_enabled() or seq_len <= self.inference_chunk_positions:
                return self._filter_slice(z, t, padded_to)
            h = torch.empty(self.d, padded_to or seq_len, device=z.device)
            h[:, seq_len:].zero_()
            for s in range(0, seq_len, self.inference_chunk_positions):
                e = min(s + self.inference_chunk_positions, seq_len)
                h[:, s:e] = self._filter_slice(z[s:e], t[:, s:e])
            return h

    def spectrum(self, seq_len: int) -> Tensor | None:
        """The cached rfft of the filter at `fft_size(seq_len)` points, (D, n // 2 + 1) complex64, or
        None where it is not cached (training mode, or larger than `spectrum_cache_max_bytes`).

        In eval mode it is computed once and reused while the parameters stay the same: the
        cache key holds every parameter's identity, storage, device and version counter, which
        in-place updates (optimizer steps, load_state_dict) bump. One entry: the last length.
        """
        n = fft_size(seq_len)
        if self.training or self.d * (n // 2 + 1) * 8 > self.spectrum_cache_max_bytes:
            self._spectrum_cache = None
            return None
        key = (seq_len, n, *((id(p), p.data_ptr(), p.device, p.dtype, p._version) for p in self.parameters()))
        if self._spectrum_cache is None or self._spectrum_cache[0] != key:
            self._spectrum_cache = None  # free the old spectrum before building the new one
            self._spectrum_cache = (key, torch.fft.rfft(self.filter(seq_len), n=n))
        return self._spectrum_cache[1]

    def _filter_slice(self, z: Tensor, t: Tensor, padded_to: int | None = None) -> Tensor:
        """z (L, E), t (1, L) -> the filter at those positions, (D, L) in fp32 (or zero-padded to
        (D, padded_to))."""
        parts = self._fusable_parts()
        if parts is not None:
            freq, w_out, *linear = parts
            return implicit_filter(z, self.modulation.decay(t), freq, w_out, linear, padded_to)
        h = self._module_filter(z, t)
        return h if padded_to is None else F.pad(h, (0, padded_to - h.shape[-1]))

    def _module_filter(self, z: Tensor, t: Tensor) -> Tensor:
        """z (L, E), t (1, L) -> (D, L) fp32 through the modules."""
        return self.modulation(t, self.implicit_filter(z).float().mT)

    def _fusable_parts(self) -> tuple[Tensor, ...] | None:
        """(freq, W_out, W_0, b_0, W_1, b_1, ...) when the filter MLP is the fp32 chain this module
        builds (plain Linear layers, one shared Sin, a bias-free last layer) and nothing hooks into
        it, so `hyenadna.ops.implicit_filter` computes exactly what the modules would; None otherwise
        (adapters, hooks, parametrizations, other dtypes: the module path, with autograd)."""
        layers = tuple(self.implicit_filter._modules.values())
        if layers != self._fusable_layers:  # the layout is checked once (again if a layer is swapped)
            linears, acts, last = layers[0:-1:2], layers[1:-1:2], layers[-1]
            ok = (len(linears) == len(acts) and all(type(a) is Sin and a is acts[0] for a in acts)
                  and type(last) is nn.Linear and last.bias is None
                  and all(type(m) is nn.Linear and m.bias is not None for m in linears))
            self._fusable_layers, self._fusable_ok = layers, ok
        if (not self._fusable_ok or type(self.modulation) is not ExponentialModulation
                or any(map(hooked, layers)) or hooked(self.implicit_filter) or hooked(self.modulation)):
            return None
        act, last = layers[1], layers[-1]
        parts = (act.freq, last.weight, *(p for m in layers[0:-1:2] for p in (m.weight, m.bias)))
        return parts if all(p.dtype == torch.float32 for p in parts) else None


# --------------------------------------------------------------------------------------------
# Hyena operator
# --------------------------------------------------------------------------------------------


@dataclass
class HyenaState:
    """What `HyenaOperator.step` needs of the positions before t, for decoding one token at a time."""

    k: Tensor  # (O-1, D, T) fp32: the long filters up to the last position decoding may reach
    bias: Tensor  # (O-1, D) fp32: their skip biases
    inputs: Tensor  # (O-1, B, D, T) fp32: each long conv's inputs so far, zeros from t on
    recent: Tensor  # (B, (O+1) D, k-1) fp32: the last k-1 in_proj outputs, the short conv's window
    t: int = 0  # positions seen


class HyenaOperator(nn.Module):
    """Order-O Hyena: in_proj -> causal short conv -> (gate, long conv)^(O-1) -> gate -> out_proj."""

    def __init__(self, d_model: int, l_max: int, order: int, short_filter_order: int, dropout: float,
                 filter_config: FilterConfig, use_fast_path: bool = True) -> None:
        super().__init__()
        self.d_model, self.l_max, self.order = d_model, l_max, order
        self.use_fast_path = use_fast_path
        inner = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(d_model, d_model)
        # Depthwise conv with padding k-1 whose first L outputs are kept: output t sees inputs
        # t-k+1..t only (causal). Same module shape as the official one: weight (3D, 1, k).
        self.short_filter = nn.Conv1d(inner, inner, kernel_size=short_filter_order, groups=inner,
                                      padding=short_filter_order - 1)
        self.filter_fn = HyenaFilter(d_model * (order - 1), l_max, filter_config)
        self.dropout = nn.Dropout(dropout)
        self.inference_chunk_elements = INFERENCE_CHUNK_ELEMENTS

    @classmethod
    def from_config(cls, config: HyenaConfig) -> HyenaOperator:
        """The operator of one layer of the model `config` describes."""
        return cls(config.d_model, config.l_max, order=config.hyena_order, short_filter_order=config.short_filter_order,
                   dropout=config.hyena_dropout, filter_config=config.filter_config,
                   use_fast_path=config.use_fast_path)

    def forward(self, u: Tensor, state: HyenaState | None = None) -> Tensor:
        """u (B, L, D) -> (B, L, D). With a fresh `state` (`init_state`), also records what `step`
        needs of these L positions (the prompt of a decoding run)."""
        seq_len = u.shape[1]
        if seq_len > self.l_max:
            raise ValueError(f"input length {seq_len} exceeds l_max={self.l_max}: the implicit filter is "
                             f"defined only up to l_max (build the model with a larger l_max)")
        y = self._forward_fast(u) if self.use_fast_path else self.forward_ref(u)
        if state is not None:
            self._prefill(u, state)
        return y

    def forward_ref(self, u: Tensor) -> Tensor:
        """The same operator through the plain references (`hyenadna.ops.hyena_operator_ref`, the
        filter through its modules): u (B, L, D) -> (B, L, D)."""
        return hyena_operator_ref(u, self.in_proj, self.short_filter.weight, self.short_filter.bias,
                                  self.filter_fn.filter_ref(u.shape[1]), self.filter_fn.bias, self.out_proj,
                                  self.order, self.dropout)

    def _forward_fast(self, u: Tensor) -> Tensor:
        """`forward` through the fast kernels. The convolutions want channels first (B, D, L);
        in_proj and out_proj swap the layout inside their GEMMs, so no transpose is copied."""
        seq_len = u.shape[1]
        if torch.is_grad_enabled():
            x = linear_channels_first(self.in_proj, u)  # (B, (O+1) D, L)
            x = shortconv(x, self.short_filter.weight, self.short_filter.bias)
        else:
            x = self._project_in_slices(u)
        *gates, v = x.split(self.d_model, dim=1)  # gates x0..x_{O-1}, each (B, D, L)
        if torch.is_grad_enabled() and self.order == 2 and not (self.training and self.dropout.p > 0):
            # The filter and bias whole (a select would cost a zero-filled gradient copy), the
            # filter zero-padded to the FFT size by its own Function (no padding copy in rfft).
            k = self.filter_fn.filter(seq_len, padded_to=fft_size(seq_len))
            return linear_channels_last(self.out_proj, gated_fftconv(x, k, self.filter_fn.bias))
        bias = rearrange(self.filter_fn.bias, "(o d) -> o d", o=self.order - 1)
        if torch.is_grad_enabled():
            k = rearrange(self.filter_fn.filter(seq_len), "(o d) l -> o d l", o=self.order - 1)
            for o, gate in enumerate(reversed(gates[1:])):
                v = self.dropout(v * gate)
                v = fftconv(v, k[o], bias[o])
            return linear_channels_last(self.out_proj, v * gates[0])
        # Inference: the filter spectrum is cached in eval mode (else each channel chunk
        # transforms its own slice of the filter), the conv runs in channel chunks.
        k_f = self.filter_fn.spectrum(seq_len)
        if k_f is None:
            k = rearrange(self.filter_fn.filter(seq_len), "(o d) l -> o d l", o=self.order - 1)
        else:
            k_f = rearrange(k_f, "(o d) f -> o d f", o=self.order - 1)
        for o, gate in enumerate(reversed(gates[1:])):
            v = self.dropout(v * gate)
            if k_f is None:
                v = fftconv_inference(v, bias[o], k=k[o], max_elements=self.inference_chunk_elements)
            else:
                v = fftconv_inference(v, bias[o], k_f=k_f[o], max_elements=self.inference_chunk_elements)
        return linear_channels_last(self.out_proj, v.mul_(gates[0]))  # v is ours: gate in place

    def _project_in_slices(self, u: Tensor) -> Tensor:
        """in_proj + short conv without grad, over slices of positions written into one
        (B, (O+1) D, L) tensor: the unconvolved projection never exists whole (1.5 GB at 1M
        tokens, D=128). Each slice starts k-1 positions early so its causal taps see real inputs."""
        batch, seq_len, _ = u.shape
        taps = self.short_filter.weight.shape[-1]
        step = max(taps, self.inference_chunk_elements // (batch * self.in_proj.out_features))
        if step >= seq_len:  # one slice: no copy into an output buffer
            return shortconv(linear_channels_first(self.in_proj, u), self.short_filter.weight, self.short_filter.bias)
        out: Tensor | None = None
        for s in range(0, seq_len, step):
            lo = max(0, s - (taps - 1))
            x = linear_channels_first(self.in_proj, u[:, lo:s + step])
            x = shortconv(x, self.short_filter.weight, self.short_filter.bias)[..., s - lo:]
            if out is None:
                out = x.new_empty(batch, x.shape[1], seq_len)
            out[..., s:s + step] = x
        assert out is not None  # seq_len >= 1
        return out

    # ---- decoding: the same operator one position at a time, with an explicit state

    def init_state(self, batch: int, total_len: int) -> HyenaState:
        """An empty decoding state for `batch` sequences of up to `total_len` positions; the filter
        is computed once, for all of them."""
        orders, d = self.order - 1, self.d_model
        filt = self.filter_fn.filter(total_len) if self.use_fast_path else self.filter_fn.filter_ref(total_len)
        device = self.filter_fn.bias.device
        return HyenaState(k=filt.float().view(orders, d, total_len), bias=self.filter_fn.bias.float().view(orders, d),
                          inputs=torch.zeros(orders, batch, d, total_len, device=device),
                          recent=torch.zeros(batch, (self.order + 1) * d, self.short_filter.weight.shape[-1] - 1,
                                             device=device))

    def _prefill(self, u: Tensor, state: HyenaState) -> None:
        """Record the long-conv inputs of the positions of u (B, L, D) and the short conv's window."""
        if state.t != 0:
            raise ValueError(f"a decoding state takes its prompt once, at position 0 (it is at {state.t})")
        seq_len = u.shape[1]
        if seq_len > state.inputs.shape[-1]:
            raise ValueError(f"the prompt has {seq_len} positions; the state holds {state.inputs.shape[-1]}")
        x = self.in_proj(u).float().transpose(1, 2)  # (B, (O+1) D, L)
        width = state.recent.shape[-1]
        if width:
            state.recent = torch.cat([state.recent, x], dim=-1)[..., -width:]
        x = shortconv_ref(x, self.short_filter.weight.float(), self.short_filter.bias.float())
        *gates, v = x.split(self.d_model, dim=1)
        conv = fftconv if self.use_fast_path else fftconv_ref
        for o, gate in enumerate(reversed(gates[1:])):
            v = v * gate
            state.inputs[o, :, :, :seq_len] = v
            v = conv(v, state.k[o, :, :seq_len], state.bias[o])
        state.t = seq_len

    def step(self, u: Tensor, state: HyenaState) -> Tensor:
        """The operator's output at the next position t = state.t: u (B, D) -> (B, D); advances
        the state. O(t D) per layer: the long conv at t is a dot product with the stored inputs."""
        t = state.t
        if t >= state.inputs.shape[-1]:
            raise ValueError(f"the decoding state holds {state.inputs.shape[-1]} positions; all are used")
        x = self.in_proj(u).float()  # (B, (O+1) D)
        window = torch.cat([state.recent, x[..., None]], dim=-1)  # (B, (O+1) D, k)
        conv = (window * self.short_filter.weight.float()[:, 0]).sum(-1) + self.short_filter.bias.float()
        state.recent = window[..., 1:]
        *gates, v = conv.split(self.d_model, dim=1)
        for o, gate in enumerate(reversed(gates[1:])):
            v = v * gate
            hist = state.inputs[o]
            hist[..., t] = v
            # y_t = sum_s k_s v_{t-s} + bias v_t over the stored inputs (newest first)
            v = (hist[..., :t + 1].flip(-1) * state.k[o, :, :t + 1]).sum(-1) + state.bias[o] * v
        state.t = t + 1
        return self.out_proj((v * gates[0]).to(u.dtype))


# --------------------------------------------------------------------------------------------
# Block, backbone
# --------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """D -> I -> D with tanh-approximate GELU (flash-attn's Mlp, as in the official code).

    With grad, in fp32 with plain unhooked Linears, it runs as one autograd node
    (`hyenadna.ops.mlp`: the same GEMMs and GELU, its (tokens, I) buffers pooled); otherwise, and
    with `use_fast_path=False`, through the modules.
    """

    def __init__(self, d_model: int, d_inner: int, use_fast_path: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.use_fast_path = use_fast_path

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        fc1, fc2 = self.fc1, self.fc2
        if (self.use_fast_path and torch.is_grad_enabled() and type(fc1) is nn.Linear and type(fc2) is nn.Linear
                and not (hooked(fc1) or hooked(fc2)) and not torch.is_autocast_enabled(x.device.type)
                and x.dtype == fc1.weight.dtype == fc2.weight.dtype == torch.float32):
            return mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        return fc2(F.gelu(fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm residual block: r += Mixer(LN1(r)); r += MLP(LN2(r))."""

    def __init__(self, d_model: int, d_inner: int, mixer: nn.Module, resid_dropout: float,
                 layer_norm_epsilon: float, residual_in_fp32: bool, use_fast_path: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_epsilon)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_epsilon)
        self.mlp = Mlp(d_model, d_inner, use_fast_path)
        self.dropout = nn.Dropout(resid_dropout)
        self.residual_in_fp32 = residual_in_fp32
        self.use_fast_path = use_fast_path
        self.inference_chunk_tokens = INFERENCE_CHUNK_TOKENS

    def forward(self, residual: Tensor, state: HyenaState | None = None) -> Tensor:
        """residual (B, L, D) -> (B, L, D); kept in fp32 when residual_in_fp32. `state`: see
        `HyenaOperator.forward`."""
        if self.residual_in_fp32:
            residual = residual.float()
        dtype = self.norm1.weight.dtype
        h = self.norm1(residual.to(dtype))
        residual = residual + self.dropout(self.mixer(h) if state is None else self.mixer(h, state))
        if torch.is_grad_enabled() or not self.use_fast_path:
            return residual + self.dropout(self.mlp(self.norm2(residual.to(dtype))))
        # Inference: the MLP is per position, so run it over slices of the sequence; its (B, L, I)
        # hidden activation is the widest tensor of the block.
        step = max(1, self.inference_chunk_tokens // residual.shape[0])
        for s in range(0, residual.shape[1], step):
            chunk = residual[:, s:s + step]
            chunk += self.dropout(self.mlp(self.norm2(chunk.to(dtype))))
        return residual

    def step(self, residual: Tensor, state: HyenaState) -> Tensor:
        """One position of `forward` while decoding: residual (B, D) -> (B, D); advances the state."""
        if self.residual_in_fp32:
            residual = residual.float()
        dtype = self.norm1.weight.dtype
        residual = residual + self.dropout(self.mixer.step(self.norm1(residual.to(dtype)), state))
        return residual + self.dropout(self.mlp(self.norm2(residual.to(dtype))))


class HyenaEmbeddings(nn.Module):
    """Token embedding only: Hyena needs no positional table."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> (B, L, D)."""
        return self.word_embeddings(input_ids)


class HyenaDNAModel(nn.Module):
    """Embedding -> n_layer Hyena blocks -> final LayerNorm; returns hidden states (B, L, D)."""

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embeddings = HyenaEmbeddings(c.padded_vocab_size, c.d_model)
        self.embed_dropout = nn.Dropout(c.embed_dropout)
        self.layers = nn.ModuleList([
            Block(c.d_model, c.d_inner, HyenaOperator.from_config(c), c.resid_dropout, c.layer_norm_epsilon,
                  c.residual_in_fp32, c.use_fast_path)
            for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon)

    def check_input_ids(self, input_ids: Tensor, prefix_len: int = 0) -> None:
        """Clear errors for the wrong rank, dtype, empty, out-of-vocabulary or over-long inputs."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty (length 0)")
        total = input_ids.shape[1] + prefix_len
        if total > self.config.l_max:
            what = f"{input_ids.shape[1]} tokens" + (f" + {prefix_len} soft-prompt positions" if prefix_len else "")
            raise ValueError(f"input of {what} = {total} exceeds the model's l_max={self.config.l_max}; "
                             f"the implicit filter is defined only up to l_max")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.padded_vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.padded_vocab_size}), got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")

    def forward(self, input_ids: Tensor, prefix_embeds: Tensor | None = None,
                states: list[HyenaState] | None = None, suffix_embeds: Tensor | None = None) -> Tensor:
        """input_ids (B, L), optional soft prompt prefix_embeds (P, D) or (B, P, D) -> (B, P + L, D).

        The prefix is inserted after the token embedding and before the first block (the
        paper's soft prompting); the caller drops the first P positions of the output.
        `suffix_embeds` (S, D) or (B, S, D) go after the last token instead (-> (B, L + S, D)): a
        causal model's last position then reads the whole sequence and the prompt. `states`
        (`init_states`): record the positions for decoding on with `step`.
        """
        prefix_len = 0 if prefix_embeds is None else prefix_embeds.shape[-2]
        suffix_len = 0 if suffix_embeds is None else suffix_embeds.shape[-2]
        self.check_input_ids(input_ids, prefix_len + suffix_len)
        hidden = self.embeddings(input_ids.long())
        if prefix_embeds is not None:
            if prefix_embeds.dim() == 2:
                prefix_embeds = prefix_embeds.unsqueeze(0).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([prefix_embeds.to(hidden.dtype), hidden], dim=1)
        if suffix_embeds is not None:
            if suffix_embeds.dim() == 2:
                suffix_embeds = suffix_embeds.unsqueeze(0).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([hidden, suffix_embeds.to(hidden.dtype)], dim=1)
        residual = self.embed_dropout(hidden)
        for i, layer in enumerate(self.layers):
            if states is not None:
                residual = layer(residual, states[i])
            elif self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute the block in backward: same modules, same state-dict keys.
                residual = checkpoint(layer, residual, use_reentrant=False)
            else:
                residual = layer(residual)
        return self.ln_f(residual.to(self.ln_f.weight.dtype))

    def init_states(self, batch: int, total_len: int) -> list[HyenaState]:
        """One empty decoding state per layer (see `HyenaOperator.init_state`)."""
        return [layer.mixer.init_state(batch, total_len) for layer in self.layers]

    def step(self, input_ids: Tensor, states: list[HyenaState]) -> Tensor:
        """The hidden state of one more token per sequence: input_ids (B,) -> (B, D); advances the states."""
        residual = self.embed_dropout(self.embeddings(input_ids.long()[:, None])[:, 0])  # (B, D)
        for layer, state in zip(self.layers, states):
            residual = layer.step(residual, state)
        return self.ln_f(residual.to(self.ln_f.weight.dtype))


def init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02) -> None:
    """GPT-2 style init as in the official code: N(0, 0.02), zero biases, and out_proj/fc2 of each
    residual branch rescaled by 1/sqrt(2 n_layer) so the residual stream's variance stays put."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=initializer_range)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if isinstance(module, (HyenaOperator, Mlp)):
        branch_out = module.out_proj if isinstance(module, HyenaOperator) else module.fc2
        nn.init.normal_(branch_out.weight, std=initializer_range / math.sqrt(2 * n_layer))


def _apply_init(model: nn.Module, config: HyenaConfig) -> None:
    # nn.Module.apply visits children before parents, so the rescale runs after the plain init.
    model.apply(lambda m: init_weights(m, config.n_layer, config.initializer_range))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tied or shared tensor counts once); buffers never count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


class HyenaDNAForCausalLM(PretrainedMixin, nn.Module, task="causal_lm"):
    """Next-token language model: backbone + LM head tied to the token embedding. `save_pretrained`
    and `from_pretrained` come from `hyenadna.checkpoint.PretrainedMixin`."""

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = HyenaDNAModel(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        _apply_init(self, config)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight

    def forward(self, input_ids: Tensor, targets: Tensor | None = None,
                prefix_embeds: Tensor | None = None, ignore_index: int = -100,
                output_hidden_states: bool = False) -> HyenaOutput:
        """input_ids (B, L) -> logits (B, L, V).

        `targets` (B, L) are already aligned with the positions (targets[:, t] is the token that
        position t must predict, usually input_ids shifted by one); entries equal to
        `ignore_index` (padding) do not count. The loss is the mean token cross-entropy in fp32.
        Soft-prompt positions (`prefix_embeds`) are dropped from the outputs.
        """
        hidden = self.backbone(input_ids, prefix_embeds)
        if prefix_embeds is not None:
            hidden = hidden[:, prefix_embeds.shape[-2]:]
        logits = self.lm_head(hidden)
        loss = None
        if targets is not None:
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long(), ignore_index=ignore_index)
        return HyenaOutput(logits=logits, loss=loss, hidden_states=hidden if output_hidden_states else None)


def pool_hidden(hidden: Tensor, mode: PoolingMode, attention_mask: Tensor | None = None) -> Tensor:
    """Pool (B, L, D) -> (B, D) over real tokens only.

    attention_mask (B, L) marks real tokens with 1 and padding with 0 on either side; `last` and
    `first` take the last/first real position, `mean` averages real positions only.
    """
    if mode not in ("last", "first", "mean"):
        raise ValueError(f"pooling must be 'last', 'first' or 'mean', got {mode!r}")
    if attention_mask is None:
        return {"last": lambda: hidden[:, -1], "first": lambda: hidden[:, 0], "mean": lambda: hidden.mean(1)}[mode]()
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match (batch, length) = {tuple(hidden.shape[:2])}")
    mask = attention_mask.to(torch.bool)
    n_real = mask.sum(1)
    if bool((n_real == 0).any()):
        raise ValueError(f"attention_mask has rows with no real token: {torch.nonzero(n_real == 0).flatten().tolist()}")
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / n_real.unsqueeze(-1).to(hidden.dtype)
    seq_len = hidden.shape[1]
    if mode == "first":
        return hidden[batch, mask.int().argmax(1)]
    return hidden[batch, seq_len - 1 - mask.flip(1).int().argmax(1)]


class HyenaDNAForSequenceClassification(PretrainedMixin, nn.Module, task="classification"):
    """Backbone + pooling + linear head for classification (single/multi-label) or regression;
    `from_pretrained(path, num_labels=...)` puts a new head on a language model's backbone."""

    def __init__(self, config: HyenaConfig, num_labels: int, pooling: PoolingMode = "last",
                 problem_type: ProblemType = "single_label") -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if pooling not in ("last", "first", "mean"):
            raise ValueError(f"pooling must be 'last', 'first' or 'mean', got {pooling!r}")
        if problem_type not in ("single_label", "multi_label", "regression"):
            raise ValueError(f"problem_type must be single_label, multi_label or regression, got {problem_type!r}")
        self.config, self.num_labels, self.pooling, self.problem_type = config, num_labels, pooling, problem_type
        self.backbone = HyenaDNAModel(config)
        self.head = nn.Linear(config.d_model, num_labels)
        _apply_init(self, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                prefix_embeds: Tensor | None = None, output_hidden_states: bool = False) -> HyenaOutput:
        """input_ids (B, L), attention_mask (B, L) -> logits (B, C).

        labels: (B,) class ids for single_label, (B, C) 0/1 for multi_label, (B,) or (B, C) floats
        for regression. Soft-prompt positions never enter the pooling.
        """
        hidden = self.backbone(input_ids, prefix_embeds)
        if prefix_embeds is not None:
            hidden = hidden[:, prefix_embeds.shape[-2]:]
        logits = self.head(pool_hidden(hidden, self.pooling, attention_mask).to(self.head.weight.dtype))
        loss = None
        if labels is not None:
            if self.problem_type == "single_label":
                loss = F.cross_entropy(logits.float(), labels.long().view(-1))
            elif self.problem_type == "multi_label":
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float().view_as(logits))
            else:
                loss = F.mse_loss(logits.float(), labels.float().view_as(logits))
        return HyenaOutput(logits=logits, loss=loss, hidden_states=hidden if output_hidden_states else None)
