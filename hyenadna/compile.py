"""Opt-in `torch.compile` of the Hyena blocks, with a fallback to eager.

Each `Block` (norm, Hyena operator, MLP, residuals) is compiled in place, so the parameters,
the state-dict keys and the checkpoints stay exactly those of the eager model. Compilation is
lazy: it happens at a block's first call and again at every new (batch, length) shape (the FFT
size is a Python function of the length, so a dynamic-shape graph would specialise on it
anyway; static graphs compile faster). Past `torch._dynamo.config.recompile_limit` shapes (8 by
default) dynamo itself runs the blocks eagerly. Should a compiled call fail where the eager call
succeeds (no C++ compiler, an op dynamo or inductor cannot handle), every block of the model goes
back to eager for good, with one warning naming the error. On the 2-core CPU this project was
measured on it gains nothing (benchmarks/README.md), hence off by default.
"""

from __future__ import annotations

import warnings
from typing import Any

import einops
import torch
import torch._functorch.config
from torch import nn
from torch._dynamo.exc import TorchDynamoException

from hyenadna.model import Block
from hyenadna.runtime import check_switch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_flag(value: Any) -> bool:
    """The `compile:` config switch as a bool; anything but true/false is an error."""
    return check_switch("compile", value)


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """Compile every hyenadna `Block` inside `model` in place with torch.compile; returns `model`.

    A compiled call that raises a dynamo/inductor error is retried eagerly: if the eager call
    succeeds, compilation is what failed, so all blocks of `model` run eagerly from then on and a
    RuntimeWarning says why; if it raises too, that (eager) error propagates and the blocks stay
    compiled. Other exceptions pass through untouched (activation checkpointing stops its
    recomputation with one). The backward graph is compiled during the forward call, so its
    failures fall back the same way.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"compile_model: {type(model).__name__} holds no hyenadna Block to compile")
    # einops registers its torch backend on first use; tracing that registration would leave a
    # guard that fails on the very next call and compiles every block twice.
    einops.rearrange(torch.zeros(1), "n -> n")
    for block in blocks:
        block._compiled_call_impl = _CompiledCall(block, blocks, mode)
    return model


def is_compiled(model: nn.Module) -> bool:
    """True while any `Block` of `model` runs through torch.compile (False after a fallback)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules() if isinstance(m, Block))


class _CompiledCall:
    """What `nn.Module.__call__` runs for a compiled block (nn.Module drops it from copies and pickles)."""

    def __init__(self, block: Block, blocks: list[Block], mode: str) -> None:
        self.block, self.blocks, self.mode = block, blocks, mode
        self.compiled = torch.compile(block._call_impl, mode=mode, dynamic=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # AOTAutograd otherwise compiles the backward graph lazily, at the first backward,
            # where no fallback is possible: compile it with the forward instead.
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return self.compiled(*args, **kwargs)
        except TorchDynamoException as err:  # tracing or the backend failed
            failure = err
        out = self.block._call_impl(*args, **kwargs)  # a genuine error (bad input) raises here, as in eager
        for b in self.blocks:
            b._compiled_call_impl = None
        warnings.warn(f"torch.compile of the Hyena blocks failed ({_reason(failure)}); running the model eagerly",
                      RuntimeWarning, stacklevel=3)
        return out


def _reason(err: BaseException) -> str:
    """The root cause of a dynamo/inductor error in one line (the wrappers' own text says little)."""
    while (inner := err.__cause__ or getattr(err, "inner_exception", None)) is not None:
        err = inner
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
