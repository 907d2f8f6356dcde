"""LightningModule for causal-LM pretraining: loss, metrics, optimizer; never touches files.

Metrics (all over real tokens only: targets equal to `ignore_index`, i.e. padding, never count):
``train/loss``, ``train/ppl``, ``train/acc`` (next-base accuracy), ``train/tokens_per_s`` (tokens
with a target, all devices, per wall-clock second between consecutive steps, data loading
included), ``train/grad_norm`` (total L2 norm before clipping), ``train/lr``, ``train/seq_len``;
``val/loss``, ``val/ppl``, ``val/acc`` are token-weighted over the whole validation set and
summed across devices before dividing, so they do not depend on batch size or device count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import SumMetric

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM, count_parameters
from hyenadna.optim import lightning_optimizers

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def rng_state() -> dict[str, Any]:
    """Every global RNG that training draws from (torch CPU/CUDA, numpy, python), checkpoint-safe.

    Stored as tensors and plain lists so the checkpoint loads with ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CausalLMModule(pl.LightningModule):
    """Next-token pretraining of `HyenaDNAForCausalLM` on batches ``{"input_ids", "targets"}``."""

    def __init__(self, config: HyenaConfig, optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, ignore_index: int = -100, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(config, HyenaConfig):
            raise TypeError(f"config must be a HyenaConfig, got {type(config).__name__}")
        self.config = config
        self.model = HyenaDNAForCausalLM(config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ignore_index = ignore_index
        self.seed = seed
        self.val_loss_sum, self.val_tokens, self.val_correct = SumMetric(), SumMetric(), SumMetric()
        self._last_step_time: float | None = None

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> logits (B, L, V)."""
        return self.model(input_ids).logits

    def _token_stats(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """-> (summed cross-entropy, number of real target tokens, number predicted correctly)."""
        input_ids, targets = batch["input_ids"], batch["targets"]
        if targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
        logits = self(input_ids).float()
        flat_t = targets.flatten().long()
        loss_sum = F.cross_entropy(logits.flatten(0, 1), flat_t, ignore_index=self.ignore_index, reduction="sum")
        real = flat_t != self.ignore_index
        correct = ((logits.flatten(0, 1).argmax(-1) == flat_t) & real).sum()
        return loss_sum, real.sum(), correct

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Mean cross-entropy over real tokens; stops the run on a non-finite loss."""
        loss_sum, n_tokens, correct = self._token_stats(batch)
        if int(n_tokens) == 0:
            raise ValueError(f"training batch {batch_idx} at step {self.global_step} has no real target tokens "
                             f"(every target is ignore_index={self.ignore_index}); check the data's padding")
        loss = loss_sum / n_tokens
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at optimizer step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); stopping. Lower the learning rate, keep "
                f"gradient clipping on, or use bf16 instead of fp16 mixed precision.")
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = int(n_tokens) * self.trainer.world_size
            self.log("train/tokens_per_s", tokens / max(now - self._last_step_time, 1e-9), on_step=True, prog_bar=True)
        self._last_step_time = now
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/ppl", loss.detach().exp(), on_step=True)
        self.log("train/acc", correct.float() / n_tokens, on_step=True)
        self.log("train/seq_len", float(batch["input_ids"].shape[1]), on_step=True)
        return loss

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Seed dropout from (seed, epoch, batch, rank), so every step draws the same masks in a
        resumed run as in an uninterrupted one, wherever it was stopped."""
        # The global RNG is also drawn by data-loader start-up, a different number of times in a
        # resumed run; reseeding per batch makes the masks independent of that history. The
        # windows themselves are pure functions of (seed, epoch, index) (hyenadna.pretrain_data).
        step_seed = np.random.SeedSequence([self.seed, self.current_epoch, batch_idx, self.global_rank])
        torch.manual_seed(int(step_seed.generate_state(1, dtype=np.uint64)[0]))

    def on_train_epoch_start(self) -> None:
        """Restart the tokens/s clock: the loader is rebuilt between epochs (sequence-length
        warmup), and that pause is not a step."""
        self._last_step_time = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the total gradient norm (unscaled, before clipping) and the learning rate."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])), on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate token sums; the epoch metrics are computed once over every device's windows."""
        loss_sum, n_tokens, correct = self._token_stats(batch)
        self.val_loss_sum.update(loss_sum)
        self.val_tokens.update(n_tokens.float())
        self.val_correct.update(correct.float())

    def on_validation_epoch_end(self) -> None:
        """val/loss, val/ppl, val/acc, token-weighted over the whole validation set."""
        n = self.val_tokens.compute()
        if float(n) > 0:
            loss = self.val_loss_sum.compute() / n
            # Already summed over devices by the metrics; sync_dist only averages equal values.
            self.log("val/loss", loss, prog_bar=True, sync_dist=True)
            self.log("val/ppl", loss.exp(), prog_bar=True, sync_dist=True)
            self.log("val/acc", self.val_correct.compute() / n, sync_dist=True)
        for metric in (self.val_loss_sum, self.val_tokens, self.val_correct):
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the weight-decay groups of `hyenadna.optim`; the schedule steps per optimizer step."""
        return lightning_optimizers(self.optimizer_factory, self.scheduler_factory, self.model,
                                    self.trainer.estimated_stepping_batches)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the architecture as a plain dict and the RNG states for exact resume."""
        checkpoint["hyena_config"] = self.config.to_dict()
        checkpoint["num_parameters"] = count_parameters(self.model)
        checkpoint["rng_states"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture; restore the RNG states."""
        saved = checkpoint.get("hyena_config")
        if saved is not None:
            check_same_architecture(saved, self.config.to_dict(), "checkpoint")
        if "rng_states" in checkpoint:
            set_rng_state(checkpoint["rng_states"])


# Fields that do not change the parameter shapes or the function computed, so a checkpoint may
# differ in them (e.g. resume with gradient checkpointing on, on the reference kernels, or with
# different dropout).
_RUNTIME_FIELDS = frozenset({"gradient_checkpointing", "use_fast_path", "embed_dropout", "resid_dropout",
                             "hyena_dropout"})


def check_same_architecture(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise ValueError listing every architecture field where `saved` and `current` differ."""
    diffs = [f"{k}: {source} has {saved.get(k)!r}, config has {current.get(k)!r}"
             for k in sorted(set(saved) | set(current))
             if k not in _RUNTIME_FIELDS and saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError(f"{source} was trained with a different model architecture:\n  " + "\n  ".join(diffs)
                         + "\nchoose the matching model config (e.g. model=<size>) or another checkpoint")
