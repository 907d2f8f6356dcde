"""What the kernels share: the size thresholds (all of them, here only) and two small helpers.

Every threshold bounds memory or a cache at long sequence lengths; none changes a result (the
chunked, sliced and cached paths compute the same values as the whole-tensor ones, which
tests/test_fast_paths.py pins). The model copies the inference ones into per-module attributes
(`inference_chunk_elements`, ...) so that a test or a user can shrink them on one layer.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

# Smallest buffer the pool keeps (ops/buffers.py): glibc's largest mmap threshold on 64-bit. Smaller
# blocks come back from glibc's heap without new page faults anyway.
POOL_MIN_BYTES = 32 << 20
# An idle pooled storage not handed out for this many requests is released: its shape is gone
# (a warmup stage changed L, the last batch was smaller).
POOL_STALE_AFTER = 256
# The short conv runs its tap passes over slices of at most this many values (2 MB fp32, which
# the k passes over a slice then read from cache): whole sequences or channel ranges forward and
# for the input gradient, channel ranges of the batch for the weight gradient, whose products go
# through one buffer (the input gradient's, else one of a slice's size).
SHORT_CONV_SLICE_ELEMENTS = 1 << 19
# Without grad, the long conv and the in_proj + short conv run in chunks of at most this many
# (padded) values: 64 MB fp32, so a 1M-token forward never holds a whole (B, D, 2L) spectrum.
INFERENCE_CHUNK_ELEMENTS = 1 << 24
# oneDNN's products allocate their outputs themselves, and glibc maps anything of 32 MB or more
# afresh (faulted in again at every step); so with grad the MLP's (tokens, I) products are made in
# row chunks of at most this many bytes, which glibc's heap reuses (16k tokens and up, I = 512).
MLP_CHUNK_BYTES = 16 << 20
# The fp32 CPU MLP computes the tanh-GELU and its slope in row slices of at most this many bytes
# per (rows, I) array, so that the several passes over a slice find it in the core's L2 cache.
GELU_SLICE_BYTES = 1 << 20
# Without grad, the MLP runs over at most this many tokens (batch x positions) at a time: its
# (B, L, I) hidden activation is the widest tensor of a block (2 GB at 1M tokens, fp32, I = 512).
INFERENCE_CHUNK_TOKENS = 1 << 16
# Without grad, the implicit filter is generated over slices of this many positions, so the
# (L, F) hidden activations of a 1M-long filter never exist whole.
INFERENCE_CHUNK_POSITIONS = 1 << 16
# Decays (D, L) up to this size are cached between calls with the same positions; larger ones
# are rebuilt (at those lengths they cost far less than the rest of a step).
DECAY_CACHE_MAX_BYTES = 1 << 24
# Eval-mode filter spectra (D, n/2 + 1) complex64 up to this size are cached; larger ones
# (1 GB per layer at D = 128, L = 1M) are recomputed, where the filter MLP is a small share anyway.
SPECTRUM_CACHE_MAX_BYTES = 1 << 28


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """A region that computes in the tensors' own dtypes: autocast disabled where it is on (a
    no-op context otherwise, cheaper than entering a disabled autocast on every call)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def hooked(module: nn.Module) -> bool:
    """True if anything hooks into the module's forward (a fast path that bypasses the module's
    call must then fall back to calling it)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
