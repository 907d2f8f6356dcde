"""Sequence-length warmup: the stage table and the callback inside a real Lightning run."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from hyenadna.lm import CausalLMModule
from hyenadna.model import HyenaConfig
from hyenadna.pretrain_data import PretrainDataModule
from hyenadna.warmup import SequenceLengthWarmup, build_stages, doubling_lengths

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_schedule_doubles_from_64_and_keeps_tokens_per_step() -> None:
    assert doubling_lengths(64, 1024) == [64, 128, 256, 512, 1024]
    assert doubling_lengths(64, 1000) == [64, 128, 256, 512, 1000]
    stages = build_stages(1024, batch_size=8, accumulate=2, unit="steps", stage_duration=100)
    assert [s.seq_len for s in stages] == [64, 128, 256, 512, 1024]
    assert [s.end for s in stages] == [100, 200, 300, 400, None]
    assert {s.seq_len * s.batch_size * s.accumulate for s in stages} == {1024 * 8 * 2}
    assert [(s.batch_size, s.accumulate) for s in stages] == [(128, 2), (64, 2), (32, 2), (16, 2), (8, 2)]


def test_accumulation_is_derived_when_the_batch_is_capped() -> None:
    stages = build_stages(1024, batch_size=8, accumulate=1, unit="steps", stage_duration=10, max_batch_size=32)
    assert [(s.batch_size, s.accumulate) for s in stages] == [(32, 4), (32, 2), (32, 1), (16, 1), (8, 1)]
    explicit = build_stages(256, batch_size=4, accumulate=1, unit="epochs",
                            stages=[{"seq_len": 64, "epochs": 2, "batch_size": 8}, {"seq_len": 256}])
    assert [(s.batch_size, s.accumulate, s.end) for s in explicit] == [(8, 2, 2), (4, 1, None)]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(stages=[{"seq_len": 64, "steps": 5}, {"seq_len": 512}]), "last stage must be"),
    (dict(stages=[{"seq_len": 64, "steps": 5}, {"seq_len": 256, "steps": 3}]), "runs until the end"),
    (dict(stages=[{"seq_len": 64, "step": 5}, {"seq_len": 256}]), "unknown key"),
    (dict(stages=[{"seq_len": 64, "steps": 5, "batch_size": 3}, {"seq_len": 256}]), "does not divide"),
    (dict(stages=[{"seq_len": 96, "steps": 5}, {"seq_len": 256}]), "does not divide"),
    (dict(stages=[{"seq_len": 128, "steps": 5}, {"seq_len": 64, "steps": 5}, {"seq_len": 256}]), "must increase"),
    (dict(stage_duration=0), "positive integer"),
])
def test_bad_schedules_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_stages(256, batch_size=4, accumulate=1, unit="steps", **kwargs)


class Recorder(pl.Callback):
    """Per optimizer step: (seq_len, tokens); per validation batch: its length."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.val_lengths: set[int] = set()
        self._tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._tokens += batch["input_ids"].numel()
        self._len = batch["input_ids"].shape[1]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self.steps.append((self._len, self._tokens))
        self._tokens = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.val_lengths.add(batch["input_ids"].shape[1])


def test_callback_switches_stages_in_a_real_run() -> None:
    torch.manual_seed(0)
    dm = PretrainDataModule(genomes=[{"name": "hs", "fasta": "data/human_chrX_8mb.fa.gz",
                                      "bed": "data/human_chrX_small.bed"}],
                            max_length=128, batch_size=2, train_samples_per_epoch=8, max_val_windows=4, seed=1)
    module = CausalLMModule(HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=130),
                            optimizer=partial(torch.optim.AdamW, lr=1e-3))
    warmup = SequenceLengthWarmup(start_len=32, stage_duration=4, unit="steps", max_batch_size=4)
    rec = Recorder()
    trainer = pl.Trainer(accelerator="cpu", max_steps=14, accumulate_grad_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[warmup, rec])
    trainer.fit(module, datamodule=dm)
    # 8 samples x 128 / (2 x 2 x 128) = 2 optimizer steps per epoch, so 4-step stages switch exactly.
    assert [(s.seq_len, s.batch_size, s.accumulate) for s in warmup.stages] == [(32, 4, 4), (64, 4, 2), (128, 2, 2)]
    assert [length for length, _ in rec.steps] == [32] * 4 + [64] * 4 + [128] * 6
    assert {tokens for _, tokens in rec.steps} == {128 * 2 * 2}
    assert rec.val_lengths == {128}
    assert warmup.state_dict() == {"stage": 2}


def test_callback_requires_max_steps() -> None:
    dm = PretrainDataModule(genomes=[{"name": "hs", "fasta": "data/human_chrX_8mb.fa.gz",
                                      "bed": "data/human_chrX_small.bed"}], max_length=128, batch_size=2)
    module = CausalLMModule(HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=130),
                            optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[SequenceLengthWarmup(stage_duration=2)])
    with pytest.raises(ValueError, match="max_steps"):
        trainer.fit(module, datamodule=dm)
