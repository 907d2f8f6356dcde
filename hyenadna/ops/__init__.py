"""The Hyena operator's kernels: each fast autograd Function beside its plain reference.

One module per kernel family; `hyena_operator_ref` composes the references into the whole
operator, `mlp` is the block's MLP. The size thresholds are in `hyenadna.ops.common`, the buffer
pool the Functions draw their large tensors from in `hyenadna.ops.buffers`, the fp32 CPU products
(oneDNN where available) in `hyenadna.ops.gemm`.
"""

from hyenadna.ops.common import autocast_off, hooked
from hyenadna.ops.fftconv import (
    FFTConvFn,
    GatedFFTConvFn,
    causal_conv_direct,
    fft_size,
    fftconv,
    fftconv_inference,
    fftconv_ref,
    gated_fftconv,
    parseval_sum,
)
from hyenadna.ops.hyena import hyena_operator_ref
from hyenadna.ops.implicit_filter import ImplicitFilterFn, implicit_filter, implicit_filter_ref
from hyenadna.ops.mlp import MlpFn, mlp, mlp_ref
from hyenadna.ops.projection import (
    ProjectionFn,
    linear_channels_first,
    linear_channels_first_ref,
    linear_channels_last,
    linear_channels_last_ref,
)
from hyenadna.ops.shortconv import ShortConvFn, shortconv, shortconv_ref

__all__ = [
    "FFTConvFn", "GatedFFTConvFn", "ImplicitFilterFn", "MlpFn", "ProjectionFn", "ShortConvFn",
    "autocast_off", "causal_conv_direct", "fft_size", "fftconv", "fftconv_inference", "fftconv_ref",
    "gated_fftconv", "hooked", "hyena_operator_ref", "implicit_filter", "implicit_filter_ref", "linear_channels_first",
    "linear_channels_first_ref", "linear_channels_last", "linear_channels_last_ref", "mlp", "mlp_ref", "parseval_sum",
    "shortconv", "shortconv_ref",
]
