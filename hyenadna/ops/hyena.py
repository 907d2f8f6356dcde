"""The Hyena operator written the obvious way: the reference the fast paths are held to.

`hyena_operator_ref` composes the plain references of every kernel: module calls and transposes
for the projections, `nn.Conv1d`'s depthwise convolution, gating, and the long convolution as an
FFT at 2L through autograd. `HyenaOperator.forward_ref` calls it with the operator's own modules
and its filter through the filter MLP's modules; a model built with `use_fast_path=False` runs it
in every layer. Tests compare the fast operator with it, the benchmarks time against it.
"""

from __future__ import annotations

from collections.abc import Callable

from einops import rearrange
from torch import Tensor

from hyenadna.ops.fftconv import fftconv_ref
from hyenadna.ops.projection import linear_channels_first_ref, linear_channels_last_ref
from hyenadna.ops.shortconv import shortconv_ref


def hyena_operator_ref(u: Tensor, in_proj: Callable[[Tensor], Tensor], short_weight: Tensor, short_bias: Tensor,
                       k: Tensor, bias: Tensor, out_proj: Callable[[Tensor], Tensor], order: int,
                       dropout: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Order-O Hyena: u (B, L, D) -> (B, L, D).

    in_proj: D -> (O+1) D and out_proj: D -> D are called as modules (hooks and wrappers see
    their inputs); short_weight ((O+1) D, 1, k) and short_bias ((O+1) D,) are the short conv's;
    k ((O-1) D, L) and bias ((O-1) D,) the long filters and their skip biases, one D-block per
    order; dropout, if given, acts on each gated product before its long convolution.

        x = shortconv(in_proj(u));  x_0, ..., x_{O-1}, v = split(x)
        v <- fftconv(v * x_i, k_i, bias_i)  for i = O-1, ..., 1;  y = out_proj(v * x_0)
    """
    x = shortconv_ref(linear_channels_first_ref(in_proj, u), short_weight, short_bias)  # (B, (O+1) D, L)
    *gates, v = x.split(x.shape[1] // (order + 1), dim=1)  # gates x_0..x_{O-1}, each (B, D, L)
    k = rearrange(k, "(o d) l -> o d l", o=order - 1)
    bias = rearrange(bias, "(o d) -> o d", o=order - 1)
    for o, gate in enumerate(reversed(gates[1:])):
        v = v * gate
        if dropout is not None:
            v = dropout(v)
        v = fftconv_ref(v, k[o], bias[o])
    return linear_channels_last_ref(out_proj, v * gates[0])
