"""HyenaDNA as the official implementation structures it, op for op: the benchmarks' yardstick.

Written from the published description of HazyResearch/hyena-dna (`standalone_hyenadna.py`,
`src/models/sequence/hyena.py`, flash-attn's Block and Mlp), not copied from it. What it keeps of
that structure, because that is what costs time:

- the long convolution as `rfft(k, n=2L) / 2L`, `rfft(u, n=2L)`, `irfft(..., norm="forward")` at
  every call, autograd through the transforms;
- einops rearranges between the (B, L, D) stream and the (B, D, L) convolution layout;
- the short filter as `nn.Conv1d(3D, 3D, 3, groups=3D, padding=2)`, first L outputs kept;
- the implicit filter MLP (Linear, shared Sin, ..., Linear) and the decay recomputed at every
  forward, through autograd;
- the dropout modules wherever the official code has them (block 0's dropout1 carries
  embed_dropout), the two-stream prenorm Block (hidden, residual), LayerNorm + fc1/GELU(tanh)/fc2
  blocks, `drop_f` and `ln_f`, and an LM head tied to the embedding.

`OfficialLM.from_ours(model)` builds one with the weights of a `hyenadna.model.HyenaDNAForCausalLM`
(strict `load_state_dict`; the keys are the same names, mapped through `key_map`), so the two can
be timed on the same parameters; tests/test_official_baseline.py holds its logits and gradients
to ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hyenadna.config import HyenaConfig


def official_fftconv(u: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """u (B, D, L), k (D, L), bias (D,): the official transform at n = 2L, per call."""
    seqlen = u.shape[-1]
    n = 2 * seqlen
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :seqlen]
    out = y + u * bias.unsqueeze(-1)
    return out.to(dtype=u.dtype)


class OfficialSin(nn.Module):
    def __init__(self, dim: int, w: float, train_freq: bool) -> None:
        super().__init__()
        if train_freq:
            self.freq = nn.Parameter(w * torch.ones(1, dim))
        else:
            self.register_buffer("freq", w * torch.ones(1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class OfficialPositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int) -> None:
        super().__init__()
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        # Official: buffers (lr_pos_emb = 0). Non-persistent here, as in our model's state dict.
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        return self.z[:, :seq_len], self.t[:, :seq_len]


class OfficialModulation(nn.Module):
    def __init__(self, d: int, fast_decay_pct: float, slow_decay_pct: float, target: float, shift: float,
                 modulate: bool) -> None:
        super().__init__()
        self.shift, self.modulate = shift, modulate
        max_decay, min_decay = math.log(target) / fast_decay_pct, math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d)[None, None], persistent=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if self.modulate:
            decay = torch.exp(-t * self.deltas.abs())
            x = x * (decay + self.shift)
        return x


class OfficialHyenaFilter(nn.Module):
    def __init__(self, d: int, l_max: int, c: HyenaConfig) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(d))
        self.dropout = nn.Dropout(0.0)  # filter_dropout: present, never applied
        self.pos_emb = OfficialPositionalEmbedding(c.emb_dim, l_max)
        act = OfficialSin(c.filter_order, c.activation_freq, c.train_freq)
        layers: list[nn.Module] = [nn.Linear(c.emb_dim, c.filter_order), act]
        for _ in range(c.num_inner_mlps):
            layers += [nn.Linear(c.filter_order, c.filter_order), act]
        layers.append(nn.Linear(c.filter_order, d, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = OfficialModulation(d, c.fast_decay_pct, c.slow_decay_pct, c.decay_target, c.shift, c.modulate)

    def filter(self, seq_len: int) -> Tensor:
        z, t = self.pos_emb(seq_len)
        h = self.implicit_filter(z)
        return self.modulation(t, h)  # (1, L, D)

    def forward(self, x: Tensor, seq_len: int, k: Tensor, bias: Tensor) -> Tensor:
        return official_fftconv(x, k, bias)


class OfficialHyenaOperator(nn.Module):
    def __init__(self, c: HyenaConfig) -> None:
        super().__init__()
        self.d_model, self.l_max, self.order = c.d_model, c.l_max, c.hyena_order
        inner = (c.hyena_order + 1) * c.d_model
        self.in_proj = nn.Linear(c.d_model, inner)
        self.out_proj = nn.Linear(c.d_model, c.d_model)
        self.short_filter = nn.Conv1d(inner, inner, kernel_size=c.short_filter_order, groups=inner,
                                      padding=c.short_filter_order - 1)
        self.filter_fn = OfficialHyenaFilter(c.d_model * (c.hyena_order - 1), c.l_max, c)
        self.dropout = nn.Dropout(c.hyena_dropout)

    def forward(self, u: Tensor) -> Tensor:
        seq_len = u.size(-2)
        l_filter = min(seq_len, self.l_max)
        u = self.in_proj(u)
        u = rearrange(u, "b l d -> b d l")
        uc = self.short_filter(u)[..., :l_filter]
        *x, v = uc.split(self.d_model, dim=1)
        k = self.filter_fn.filter(l_filter)[0]
        k = rearrange(k, "l (o d) -> o d l", o=self.order - 1)
        bias = rearrange(self.filter_fn.bias, "(o d) -> o d", o=self.order - 1)
        for o, x_i in enumerate(reversed(x[1:])):
            v = self.dropout(v * x_i)
            v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o])
        y = rearrange(v * x[0], "b d l -> b l d")
        return self.out_proj(y)


def official_operator_from(op: nn.Module, config: HyenaConfig) -> OfficialHyenaOperator:
    """An official-structured copy of one of our `HyenaOperator`s (built from `config`), weights loaded strictly."""
    official = OfficialHyenaOperator(config)
    official.load_state_dict({k: v.detach().clone() for k, v in op.state_dict().items()}, strict=True)
    return official


class OfficialMlp(nn.Module):
    def __init__(self, d_model: int, d_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class OfficialBlock(nn.Module):
    """flash-attn's prenorm Block: (hidden, residual) in, (hidden, residual) out."""

    def __init__(self, c: HyenaConfig, first: bool) -> None:
        super().__init__()
        self.residual_in_fp32 = c.residual_in_fp32
        self.mixer = OfficialHyenaOperator(c)
        self.dropout1 = nn.Dropout(c.embed_dropout if first else c.resid_dropout)
        self.norm1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon)
        self.mlp = OfficialMlp(c.d_model, c.d_inner)
        self.dropout2 = nn.Dropout(c.resid_dropout)
        self.norm2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon)

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        dropped = self.dropout1(hidden)
        residual = (dropped + residual) if residual is not None else dropped
        hidden = self.norm1(residual.to(dtype=self.norm1.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden = self.mixer(hidden)
        dropped = self.dropout2(hidden)
        residual = dropped + residual
        hidden = self.norm2(residual.to(dtype=self.norm2.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        return self.mlp(hidden), residual


class OfficialEmbeddings(nn.Module):
    def __init__(self, vocab: int, d_model: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d_model)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


class OfficialBackbone(nn.Module):
    def __init__(self, c: HyenaConfig) -> None:
        super().__init__()
        self.embeddings = OfficialEmbeddings(c.padded_vocab_size, c.d_model)
        self.layers = nn.ModuleList([OfficialBlock(c, first=i == 0) for i in range(c.n_layer)])
        self.drop_f = nn.Dropout(c.resid_dropout)
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden, residual = self.embeddings(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = self.drop_f(hidden) + residual
        return self.ln_f(residual.to(dtype=self.ln_f.weight.dtype))


class OfficialLM(nn.Module):
    """Backbone + tied LM head; `loss(ids, targets)` is the mean token cross-entropy."""

    def __init__(self, c: HyenaConfig) -> None:
        super().__init__()
        self.config = c
        self.backbone = OfficialBackbone(c)
        self.lm_head = nn.Linear(c.d_model, c.padded_vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm_head(self.backbone(input_ids))

    def loss(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        logits = self(input_ids)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    @staticmethod
    def key_map(ours_key: str) -> str:
        """Our state-dict key -> this model's (the names are the official ones in both)."""
        return ours_key

    @classmethod
    def from_ours(cls, model: nn.Module) -> OfficialLM:
        """An official-structured copy of a HyenaDNAForCausalLM, its weights loaded strictly."""
        official = cls(model.config)
        official.load_state_dict({cls.key_map(k): v.detach().clone() for k, v in model.state_dict().items()},
                                 strict=True)
        return official
