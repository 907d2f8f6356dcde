"""Sequence-length warmup (HyenaDNA paper): train on short windows first, doubling up to the target.

The callback owns only the schedule. Each stage is (sequence length, duration, per-device batch
size). Tokens per optimizer step stay constant across stages: as windows shrink the per-device
batch grows, and the gradient accumulation that makes up the rest is derived here, never set by
hand, then applied through ``trainer.accumulate_grad_batches``.

How a stage switch happens without restarting (Lightning 2.x): the trainer reloads the train
loader at every epoch start (``reload_dataloaders_every_n_epochs=1``, set by this callback), and
``on_train_epoch_end`` tells the datamodule the next stage (``set_stage``). Switches therefore
happen at epoch boundaries: a stage given in optimizer steps ends at the first epoch end at or
after its cumulative step boundary. The callback scales the datamodule's
``train_samples_per_epoch`` (given for the final length) by target / seq_len, so every epoch
holds the same tokens and optimizer steps; step durations that are multiples of that are exact. Validation loaders are not touched: they always use the final length.

The stage in force is a pure function of (optimizer steps done, epochs completed) evaluated at
epoch ends; a checkpoint stores the stage its next batch must use (the next epoch's when it was
written at an epoch end), so a resumed run continues in the right stage with the right batch
and accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


@dataclass(frozen=True)
class Stage:
    """One warmup stage; `end` is the cumulative boundary (steps or epochs), None for the last stage."""

    seq_len: int
    batch_size: int
    accumulate: int
    end: int | None


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"sequence-length warmup: {what} must be a positive integer, got {value!r}")
    return value


def doubling_lengths(start_len: int, target_len: int) -> list[int]:
    """[start, 2 start, 4 start, ..., target]: the paper's schedule (64, 128, ..., target)."""
    _positive_int(start_len, "start_len")
    _positive_int(target_len, "target length")
    lengths = []
    length = start_len
    while length < target_len:
        lengths.append(length)
        length *= 2
    return lengths + [target_len]


def build_stages(target_len: int, batch_size: int, accumulate: int, unit: str,
                 stages: list[dict[str, Any]] | None = None, start_len: int = 64, stage_duration: int | None = None,
                 max_batch_size: int | None = None) -> list[Stage]:
    """The stage table; raises ValueError if tokens per optimizer step cannot stay exactly constant.

    Tokens per device and optimizer step = target_len * batch_size * accumulate (what the run
    uses at the final length; every device runs the same table). A stage's per-device batch is
    its `batch_size` if given, else the final batch scaled by target_len / seq_len (capped at
    `max_batch_size`); its accumulation is whatever makes up the rest and must be whole.
    """
    if unit not in ("steps", "epochs"):
        raise ValueError(f"sequence-length warmup: unit must be 'steps' or 'epochs', got {unit!r}")
    if stages is None:
        duration = _positive_int(stage_duration, f"stage_duration ({unit} per stage)")
        stages = [{"seq_len": n, unit: duration} for n in doubling_lengths(start_len, target_len)[:-1]]
        stages.append({"seq_len": target_len})
    if not stages:
        raise ValueError("sequence-length warmup: stages is empty")
    if max_batch_size is not None:
        _positive_int(max_batch_size, "max_batch_size")
    samples_per_step = batch_size * accumulate  # per device, at the final length
    tokens_per_step = target_len * samples_per_step
    table: list[Stage] = []
    boundary = 0
    previous_len = 0
    for i, raw in enumerate(stages):
        spec = dict(raw)
        unknown = sorted(set(spec) - {"seq_len", "batch_size", unit})
        if unknown:
            raise ValueError(f"sequence-length warmup: stage {i} has unknown key(s) {unknown}; "
                             f"allowed: seq_len, batch_size, {unit} (unit={unit!r})")
        seq_len = _positive_int(spec.get("seq_len"), f"stage {i} seq_len")
        if seq_len <= previous_len:
            raise ValueError(f"sequence-length warmup: stage lengths must increase, stage {i} has {seq_len} "
                             f"after {previous_len}")
        previous_len = seq_len
        last = i == len(stages) - 1
        if last:
            if seq_len != target_len:
                raise ValueError(f"sequence-length warmup: the last stage must be the data's max_length "
                                 f"{target_len}, got {seq_len}")
            if unit in spec:
                raise ValueError("sequence-length warmup: the last stage runs until the end of training "
                                 f"(trainer.max_steps); remove its {unit!r}")
            end = None
        else:
            boundary += _positive_int(spec.get(unit), f"stage {i} {unit}")
            end = boundary
        if tokens_per_step % seq_len:
            raise ValueError(f"sequence-length warmup: stage {i} length {seq_len} does not divide the "
                             f"{tokens_per_step} tokens per device and optimizer step "
                             f"(max_length {target_len} x batch {batch_size} x accumulation {accumulate})")
        samples = tokens_per_step // seq_len
        if "batch_size" in spec:
            stage_batch = _positive_int(spec["batch_size"], f"stage {i} batch_size")
        else:
            # The final batch scaled up as windows shrink (same accumulation), capped for memory.
            stage_batch = max(1, batch_size * target_len // seq_len)
            if max_batch_size is not None:
                stage_batch = min(stage_batch, max_batch_size)
            while samples % stage_batch:  # the largest such batch that divides exactly
                stage_batch -= 1
        if samples % stage_batch:
            raise ValueError(f"sequence-length warmup: stage {i} batch_size {stage_batch} does not divide the "
                             f"{samples} windows of {seq_len} per device and optimizer step")
        table.append(Stage(seq_len, stage_batch, samples // stage_batch, end))
    return table


class SequenceLengthWarmup(Callback):
    """Lightning callback running the sequence-length warmup schedule on a datamodule with `set_stage`.

    Give either explicit `stages` (list of {seq_len, steps|epochs, batch_size?}, last one = the
    data's max_length with no duration) or the paper's default: lengths doubling from
    `start_len` to max_length, each warmup stage lasting `stage_duration` units.
    """

    def __init__(self, stages: list[dict[str, Any]] | None = None, start_len: int = 64,
                 stage_duration: int | None = None, unit: str = "steps", max_batch_size: int | None = None) -> None:
        super().__init__()
        if stages is None and stage_duration is None:
            raise ValueError("SequenceLengthWarmup needs `stages` or `stage_duration`")
        self.stage_specs = [dict(s) for s in stages] if stages is not None else None
        self.start_len, self.stage_duration, self.unit, self.max_batch_size = start_len, stage_duration, unit, max_batch_size
        self.stages: list[Stage] = []
        self.stage_idx = -1
        self._trainer: pl.Trainer | None = None
        self._base_accumulate: int | None = None
        self._base_samples = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build the stage table from the datamodule and trainer; apply the first stage."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "set_stage"):
            raise ValueError("SequenceLengthWarmup needs a datamodule with set_stage(seq_len, batch_size)")
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise ValueError("sequence-length warmup needs trainer.max_steps: the number of optimizer steps per "
                             "epoch changes between stages, so the learning-rate horizon must be given in steps")
        if self._base_accumulate is None:
            self._base_accumulate = int(trainer.accumulate_grad_batches)
            self._base_samples = int(dm.train_samples_per_epoch)
        self.stages = build_stages(dm.max_length, dm.batch_size, self._base_accumulate, self.unit,
                                   self.stage_specs, self.start_len, self.stage_duration,
                                   self.max_batch_size)
        trainer.reload_dataloaders_every_n_epochs = 1
        self._trainer = trainer
        self.stage_idx = -1
        self._apply(0)
        tokens = self.stages[-1].seq_len * self.stages[-1].batch_size * self.stages[-1].accumulate * trainer.world_size
        rank_zero_info("sequence-length warmup, " + f"{tokens} tokens per optimizer step:\n" + "\n".join(
            f"  stage {i}: seq_len {s.seq_len:>7} batch {s.batch_size:>4} x accumulate {s.accumulate:>3}"
            f"  until {'the end' if s.end is None else f'{self.unit} {s.end}'}" for i, s in enumerate(self.stages)))

    def stage_for(self, global_step: int, epochs_completed: int) -> int:
        """Index of the stage in force after `global_step` optimizer steps and `epochs_completed` epochs."""
        done = global_step if self.unit == "steps" else epochs_completed
        return sum(1 for s in self.stages if s.end is not None and done >= s.end)

    def _apply(self, idx: int, force: bool = False) -> None:
        if idx == self.stage_idx and not force:
            return
        if not 0 <= idx < len(self.stages):
            raise ValueError(f"sequence-length warmup: stage {idx} does not exist in this run's {len(self.stages)} "
                             f"stages; the checkpoint was written with another warmup schedule")
        assert self._trainer is not None
        s = self.stages[idx]
        dm = self._trainer.datamodule
        dm.set_stage(s.seq_len, s.batch_size)
        # Same tokens (hence optimizer steps) per epoch at every stage: validation, checkpoints
        # and stage switches keep a fixed rhythm in steps.
        dm.train_samples_per_epoch = self._base_samples * self.stages[-1].seq_len // s.seq_len
        self._trainer.accumulate_grad_batches = s.accumulate
        if self.stage_idx >= 0 and idx > self.stage_idx + 1:
            rank_zero_warn(f"sequence-length warmup skipped stage(s) {list(range(self.stage_idx + 1, idx))}: an epoch "
                           f"outlasted them; lower data.train_samples_per_epoch")
        self.stage_idx = idx
        rank_zero_info(f"sequence-length warmup: stage {idx}, seq_len {s.seq_len}, batch {s.batch_size}, "
                       f"accumulate {s.accumulate}")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn once per stage when the epoch's batches do not split into whole accumulation groups."""
        s = self.stages[self.stage_idx]
        n = trainer.num_training_batches
        if isinstance(n, int) and n % s.accumulate:
            rank_zero_warn(f"sequence-length warmup: {n} batches per epoch is not a multiple of the accumulation "
                           f"{s.accumulate} at seq_len {s.seq_len}; the epoch's last optimizer step sees fewer tokens")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move to the stage that the next epoch must use."""
        self._apply(self.stage_for(trainer.global_step, trainer.current_epoch + 1))

    def state_dict(self) -> dict[str, int]:
        """The stage the next batch must use: the next epoch's if this epoch's batches are done."""
        trainer = self._trainer
        if trainer is None or not self.stages:
            return {}
        loop = trainer.fit_loop.epoch_loop
        epoch_over = (loop.batch_progress.current.ready >= trainer.num_training_batches
                      or 0 < trainer.max_steps <= trainer.global_step)
        if epoch_over:
            return {"stage": self.stage_for(trainer.global_step, trainer.current_epoch + 1)}
        return {"stage": self.stage_idx}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume in the saved stage (restored after the datamodule, so this one wins)."""
        if "stage" in state_dict:
            self._apply(int(state_dict["stage"]), force=True)
