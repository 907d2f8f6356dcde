"""The knobs of a HyenaDNA model: `HyenaConfig` (+ the released sizes), checked on construction.

Kept apart from the model's math (hyenadna.model) because the checkpoint formats
(hyenadna.checkpoint) read and write configs and the model's heads take their save/load methods
from there: both import this module, and neither the other way round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class HyenaConfig:
    """Every knob of a HyenaDNA model; checks itself on construction."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None  # None -> 4 * d_model
    l_max: int = 1026  # longest input (tokens, soft prompt included) the filters are defined for
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    # Hyena operator
    hyena_order: int = 2
    short_filter_order: int = 3
    hyena_dropout: float = 0.0
    # implicit filter
    emb_dim: int = 5
    filter_order: int = 64
    num_inner_mlps: int = 2
    activation_freq: float = 10.0
    train_freq: bool = True
    modulate: bool = True
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    decay_target: float = 1e-2
    # 0.0 in the official training code, 0.05 in every official inference port (standalone,
    # Colab, Hugging Face); the ports are what downstream users validated, so 0.05 by default.
    shift: float = 0.05
    # blocks
    embed_dropout: float = 0.1
    resid_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    residual_in_fp32: bool = True
    gradient_checkpointing: bool = False
    pad_token_id: int = 4
    # False: every layer runs the plain references of its kernels (hyenadna.ops.*_ref,
    # `HyenaOperator.forward_ref`) instead of the fast autograd Functions: slow, for checking.
    # Neither this nor gradient_checkpointing changes a parameter or a state-dict key.
    use_fast_path: bool = True

    def __post_init__(self) -> None:
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        positive = ("d_model", "n_layer", "d_inner", "vocab_size", "pad_vocab_size_multiple",
                    "short_filter_order", "filter_order", "emb_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HyenaConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.l_max, int) or self.l_max < 2:
            raise ValueError(f"HyenaConfig.l_max must be an integer >= 2, got {self.l_max!r}")
        if not isinstance(self.hyena_order, int) or self.hyena_order < 2:
            raise ValueError(f"HyenaConfig.hyena_order must be an integer >= 2, got {self.hyena_order!r}")
        if not isinstance(self.num_inner_mlps, int) or self.num_inner_mlps < 0:
            raise ValueError(f"HyenaConfig.num_inner_mlps must be an integer >= 0, got {self.num_inner_mlps!r}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(
                f"HyenaConfig.emb_dim must be odd and >= 3 ([t, cos, sin] features), got {self.emb_dim}")
        for name in ("embed_dropout", "resid_dropout", "hyena_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"HyenaConfig.{name} must be in [0, 1), got {value!r}")
        for name in ("activation_freq", "fast_decay_pct", "slow_decay_pct", "layer_norm_epsilon",
                     "initializer_range"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"HyenaConfig.{name} must be a positive number, got {value!r}")
        if not 0.0 < self.decay_target < 1.0:
            raise ValueError(f"HyenaConfig.decay_target must be in (0, 1), got {self.decay_target!r}")
        if not math.isfinite(self.shift):
            raise ValueError(f"HyenaConfig.shift must be finite, got {self.shift!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"HyenaConfig.pad_token_id={self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")
        for name in ("train_freq", "modulate", "residual_in_fp32", "gradient_checkpointing", "use_fast_path"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"HyenaConfig.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to pad_vocab_size_multiple (12 -> 16)."""
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    @property
    def filter_config(self) -> FilterConfig:
        """The implicit filter's settings, for `HyenaFilter`."""
        return FilterConfig(emb_dim=self.emb_dim, filter_order=self.filter_order, num_inner_mlps=self.num_inner_mlps,
                            activation_freq=self.activation_freq, train_freq=self.train_freq, modulate=self.modulate,
                            fast_decay_pct=self.fast_decay_pct, slow_decay_pct=self.slow_decay_pct,
                            decay_target=self.decay_target, shift=self.shift)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HyenaConfig:
        """Build from a dict; unknown keys are an error, never silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown HyenaConfig field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> HyenaConfig:
        """The architecture of a released HyenaDNA size, e.g. ``HyenaConfig.preset("tiny-1k")``."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[key], **overrides})


@dataclass(frozen=True)
class FilterConfig:
    """The implicit filter's settings (the filter fields of `HyenaConfig`, documented there)."""

    emb_dim: int
    filter_order: int
    num_inner_mlps: int
    activation_freq: float
    train_freq: bool
    modulate: bool
    fast_decay_pct: float
    slow_decay_pct: float
    decay_target: float
    shift: float


# The released sizes (LongSafari/hyenadna-*-seqlen). l_max is the trained length + 2.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-1k": dict(d_model=128, n_layer=2, d_inner=512, l_max=1026),
    "tiny-1k-d256": dict(d_model=256, n_layer=2, d_inner=1024, l_max=1026),
    "tiny-16k": dict(d_model=128, n_layer=2, d_inner=512, l_max=16386),
    "small-32k": dict(d_model=256, n_layer=4, d_inner=1024, l_max=32770),
    "medium-160k": dict(d_model=256, n_layer=8, d_inner=1024, l_max=160002),
    "medium-450k": dict(d_model=256, n_layer=8, d_inner=1024, l_max=450002),
    "large-1m": dict(d_model=256, n_layer=8, d_inner=1024, l_max=1000002),
}
PRESET_ALIASES = {"tiny-16k-d128": "tiny-16k"}
