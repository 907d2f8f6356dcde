"""AdamW parameter groups and the cosine learning-rate schedule with linear warmup.

Shared by pretraining (`hyenadna.lm`) and finetuning. The weight-decay split follows the
official HyenaDNA recipe and what its maintainer names as essential when users fail to
reproduce it: the implicit long-filter MLP (its Linears and the shared sine frequency `freq`)
gets no weight decay, because decaying it shrinks the filters towards zero and the model
loses its long-range memory. On top of that we also exempt every bias (including the
long-conv skip bias `filter_fn.bias`), every LayerNorm and the token embedding, which is the
standard GPT split (the official code's optional `optimizer_param_grouping`): these
parameters set offsets and scales, not feature directions, and decaying them only biases
them towards zero. The embedding is tied to the LM head; it is listed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# Modules whose every parameter is exempt from weight decay.
_NO_DECAY_MODULES = (nn.LayerNorm, nn.Embedding, nn.GroupNorm, nn.BatchNorm1d)


def no_decay_reason(module_path: str, param_name: str, module: nn.Module, param: nn.Parameter) -> str | None:
    """Why a parameter is exempt from weight decay, or None when it decays."""
    full = f"{module_path}.{param_name}" if module_path else param_name
    if ".implicit_filter." in f".{full}":
        return "implicit filter"
    if isinstance(module, _NO_DECAY_MODULES):
        return "norm/embedding"
    if param_name == "bias" or param.ndim < 2:
        return "bias/scale"
    return None


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: `decay` (weight matrices) and `no_decay` (filter MLP, biases, norms, embeddings).

    Frozen parameters are left out. Each parameter appears once even when tied.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params: dict[int, nn.Parameter] = {}
    exempt: set[int] = set()
    # A tied tensor is visited once per owner (embedding and LM head); exempt if any owner says so.
    for module_path, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            params.setdefault(id(param), param)
            if no_decay_reason(module_path, name, module, param):
                exempt.add(id(param))
    decay = [p for i, p in params.items() if i not in exempt]
    no_decay = [p for i, p in params.items() if i in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(optimizer: Callable[..., torch.optim.Optimizer], model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate a partially-configured optimizer (e.g. Hydra `_partial_` AdamW) on `parameter_groups`.

    The partial's own `weight_decay` applies to the `decay` group; the other group gets 0.
    """
    keywords = getattr(optimizer, "keywords", {})
    weight_decay = float(keywords.get("weight_decay", 0.0))
    return optimizer(parameter_groups(model, weight_decay))


def lightning_optimizers(optimizer: Callable[..., torch.optim.Optimizer],
                         scheduler: Callable[..., Any] | None, model: nn.Module,
                         total_steps: int | float) -> dict[str, Any]:
    """`configure_optimizers` output shared by the pretraining and finetuning modules: the
    optimizer on `parameter_groups`, and the schedule (if any) stepped per optimizer step."""
    opt = build_optimizer(optimizer, model)
    if scheduler is None:
        return {"optimizer": opt}
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt, total_steps=total_steps), "interval": "step"}}


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over warmup_steps, then cosine 1 -> min_lr_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_warmup_scheduler(optimizer: torch.optim.Optimizer, total_steps: int | float,
                            warmup_fraction: float = 0.01, min_lr_ratio: float = 0.1) -> LambdaLR:
    """Per-optimizer-step cosine schedule whose horizon is the real number of optimizer steps.

    `total_steps` comes from the trainer (`trainer.estimated_stepping_batches`), never from a
    nominal dataset size: the official config derives it from a fixed 1e9-token "epoch", so its
    cosine barely decays in a real run.
    """
    if not (isinstance(total_steps, int) or float(total_steps).is_integer()) or total_steps < 1:
        raise ValueError(f"the cosine schedule needs a finite number of optimizer steps >= 1, got {total_steps}; "
                         f"set trainer.max_steps (or a finite trainer.max_epochs)")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    total = int(total_steps)
    warmup = max(1, round(warmup_fraction * total)) if warmup_fraction > 0 else 0
    return LambdaLR(optimizer, partial(cosine_with_warmup, warmup_steps=warmup, total_steps=total,
                                       min_lr_ratio=min_lr_ratio))


def describe_groups(optimizer: torch.optim.Optimizer) -> Iterable[str]:
    """One line per parameter group: name, tensor count, parameter count, weight decay."""
    for g in optimizer.param_groups:
        n = sum(p.numel() for p in g["params"])
        yield f"{g.get('name', '?')}: {len(g['params'])} tensors, {n:,} parameters, weight_decay={g['weight_decay']}"
