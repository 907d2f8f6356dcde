"""Runs that lose no work, configs that run no foreign code, no NaN reported as a result.

Killed, interrupted and crashed pretraining runs resume bit for bit; output folders keep their
history; checkpoints are written atomically; `_target_`s are checked by exact name; finetuning
stops on a non-finite loss and refuses non-finite targets; every user error is one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from hyenadna.pretrain import fit
from hyenadna.run import (AtomicCheckpointIO, RunCheckpoint, carry_metrics, check_checkpoint_dirs, check_targets,
                          run_and_report)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_cfg, metrics_rows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# Smoke pretraining with dropout on (so the RNG matters) and a short run of 4-step epochs.
DROPOUT = ("experiment=smoke", "baseline.markov_orders=[]", "+model.resid_dropout=0.1", "+model.embed_dropout=0.1")


def last_step(out: Path) -> int:
    return int(torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


def train_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *DROPOUT, f"output_dir={out}", f"hydra.run.dir={out}/.hydra_run",
            *overrides]


def start_and_wait(cmd: list[str], out: Path, at_step: int, timeout: float = 600.0) -> subprocess.Popen:
    """Start a training process and return once its metrics.csv holds a row of step >= at_step."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {at_step}:\n{proc.stderr.read()[-3000:]}")
        try:
            with open(out / "metrics.csv", newline="") as f:
                if any(r["step"] and int(r["step"]) + 1 >= at_step for r in csv.DictReader(f)):
                    return proc
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run did not reach the step in time")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The reference: 60 steps in one go."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, fit(make_cfg(out, *DROPOUT, "trainer.max_steps=60"))


# -- 1. a killed run leaves a checkpoint; 2. resume is exact at any step ------------------------


def test_kill_9_leaves_a_checkpoint_and_resuming_in_place_is_bitwise(tmp_path: Path, uninterrupted) -> None:
    ref, ref_result = uninterrupted
    out = tmp_path / "run"
    overrides = ("trainer.max_steps=60", "callbacks.checkpoint.last_every_n_steps=3")
    proc = start_and_wait(train_cmd(out, *overrides), out, at_step=14)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = last_step(out)
    assert 12 <= step < 60, step  # killed part-way, with a checkpoint of at most 3 steps ago (or an epoch end)
    resumed = fit(make_cfg(out, *DROPOUT, *overrides, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"))
    assert metrics_rows(out) == metrics_rows(ref)
    assert resumed["val_loss"] == ref_result["val_loss"]


def test_crash_mid_epoch_then_resume_is_bitwise(tmp_path: Path, uninterrupted, monkeypatch) -> None:
    """A crash at step 7 (inside epoch 1, steps 5-8) after a save at step 6: dropout masks and the
    sampler position come back exactly (on today's main the epoch-start reseed broke this)."""
    ref, ref_result = uninterrupted
    from hyenadna.lm import CausalLMModule

    original = CausalLMModule.training_step

    def crash_at_7(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == 6:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLMModule, "training_step", crash_at_7)
    overrides = ("trainer.max_steps=60", "callbacks.checkpoint.last_every_n_steps=1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_cfg(tmp_path, *DROPOUT, *overrides))
    monkeypatch.setattr(CausalLMModule, "training_step", original)
    assert last_step(tmp_path) == 6
    resumed = fit(make_cfg(tmp_path, *DROPOUT, *overrides, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    assert metrics_rows(tmp_path) == metrics_rows(ref)
    assert resumed["val_loss"] == ref_result["val_loss"]


def test_a_kill_right_after_a_periodic_save_keeps_that_steps_row(tmp_path: Path, uninterrupted, monkeypatch) -> None:
    """The run dies the moment last.ckpt of step 6 is on disk, before Lightning would log that
    step's row (it logs after the batch-end hooks): the row is already in metrics.csv, so the
    resumed run's rows equal the uninterrupted run's (a kill -9 in that gap used to lose it)."""
    ref, ref_result = uninterrupted
    original = AtomicCheckpointIO.save_checkpoint

    def die_after_step_6(self, checkpoint, path, storage_options=None):  # type: ignore[no-untyped-def]
        original(self, checkpoint, path, storage_options)
        if checkpoint["global_step"] == 6:
            raise RuntimeError("killed right after the save")

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", die_after_step_6)
    overrides = ("trainer.max_steps=60", "callbacks.checkpoint.last_every_n_steps=3")
    with pytest.raises(RuntimeError, match="killed right after the save"):
        fit(make_cfg(tmp_path, *DROPOUT, *overrides))
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", original)
    assert last_step(tmp_path) == 6
    assert max(int(r["step"]) for r in metrics_rows(tmp_path) if r["step"]) == 5  # step 6's row: label 5
    resumed = fit(make_cfg(tmp_path, *DROPOUT, *overrides, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    assert metrics_rows(tmp_path) == metrics_rows(ref)
    assert resumed["val_loss"] == ref_result["val_loss"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_exits_with_its_code(tmp_path: Path, uninterrupted, signum: int) -> None:
    ref, _ = uninterrupted
    out = tmp_path / "run"
    proc = start_and_wait(train_cmd(out, "trainer.max_steps=60", "callbacks.checkpoint.last_every_n_steps=1000"),
                          out, at_step=6)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    step = last_step(out)
    assert 6 <= step < 60
    assert f"training stopped after optimizer step {step}" in stderr and "ckpt_path=" in stderr
    fit(make_cfg(out, *DROPOUT, "trainer.max_steps=60", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"))
    assert metrics_rows(out) == metrics_rows(ref)


def test_last_checkpoint_is_written_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    """save_top_k=0 (the default): Lightning alone writes last.ckpt only at the very end."""
    saved: list[int] = []
    orig = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):  # type: ignore[no-untyped-def]
        if Path(path).name == "last.ckpt":
            saved.append(int(checkpoint["global_step"]))
        return orig(self, checkpoint, path, storage_options)

    AtomicCheckpointIO.save_checkpoint = spy  # type: ignore[method-assign]
    try:
        fit(make_cfg(tmp_path, *DROPOUT, "trainer.max_steps=10", "callbacks.checkpoint.last_every_n_steps=3"))
    finally:
        AtomicCheckpointIO.save_checkpoint = orig  # type: ignore[method-assign]
    assert saved == [3, 4, 6, 8, 9, 10]  # every 3 steps, every epoch end (4 steps), the end
    with pytest.raises(ValueError, match="last_every_n_steps"):
        RunCheckpoint(dirpath=str(tmp_path), last_every_n_steps=0)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)
    before = path.read_bytes()

    class FullDisk:
        """The temporary file, on a disk that fills after 1000 bytes."""

        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f, self.written = f, 0

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            if self.written + len(data) > 1000:
                self.f.write(bytes(data)[:1000 - self.written])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.f, name)

    import hyenadna.run

    real = hyenadna.run.atomic_write

    @contextlib.contextmanager
    def filling(p, mode):  # type: ignore[no-untyped-def]
        with real(p, mode) as f:
            yield FullDisk(f)

    monkeypatch.setattr(hyenadna.run, "atomic_write", filling)
    with pytest.raises(OSError, match=rf"No space left on device: '{path}'"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(100_000)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# -- 3. an output folder keeps its history -------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_and_resuming_in_place_appends(tmp_path: Path, uninterrupted) -> None:
    ref, _ = uninterrupted
    first = fit(make_cfg(tmp_path, *DROPOUT, "trainer.max_steps=8"))
    first_rows = metrics_rows(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match=r"already holds a run \(config.yaml, metrics.csv, checkpoints/.*"
                                              r"ckpt_path=.*last.ckpt output_dir="):
        fit(make_cfg(tmp_path, *DROPOUT, "trainer.max_steps=8"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing touched
    assert not (tmp_path / "checkpoints" / "last-v1.ckpt").exists()
    # A checkpoint from elsewhere does not make the folder resumable either.
    with pytest.raises(FileExistsError, match="already holds a run"):
        fit(make_cfg(tmp_path, *DROPOUT, f"ckpt_path={ref / 'checkpoints' / 'last.ckpt'}"))
    # Resuming in place to a longer run keeps every earlier row and the replaced config.
    fit(make_cfg(tmp_path, *DROPOUT, "trainer.max_steps=60", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    rows = metrics_rows(tmp_path)
    assert rows[:len(first_rows) - 1] == first_rows[:-1]  # all but the final validation row (step 8)
    assert sorted(int(r["step"]) for r in rows if r["train/loss"]) == list(range(60))
    assert OmegaConf.load(tmp_path / "config.1.yaml").trainer.max_steps == 8
    assert OmegaConf.load(tmp_path / "config.yaml").trainer.max_steps == 60
    assert first["global_step"] == 8


def test_carry_metrics_keeps_rows_before_the_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "metrics.csv"
    src.write_text("epoch,step,train/loss,val/loss\n0,0,2.5,\n0,1,2.4,\n0,1,,2.3\n0,2,2.2,\n")
    assert carry_metrics(src, src, before_step=2) == 3
    assert src.read_text().splitlines() == ["epoch,step,train/loss,val/loss", "0,0,2.5,", "0,1,2.4,", "0,1,,2.3"]


def test_a_row_cut_short_by_a_kill_is_dropped(tmp_path: Path) -> None:
    """kill -9 during an append leaves a partial last row: '1,3' of '1,31,2.1,' would read as step 3."""
    src = tmp_path / "metrics.csv"
    src.write_text("epoch,step,train/loss,val/loss\n0,0,2.5,\n0,1,2.4,\n1,3")
    assert carry_metrics(src, src, before_step=10) == 2
    assert src.read_text().splitlines() == ["epoch,step,train/loss,val/loss", "0,0,2.5,", "0,1,2.4,"]


# -- 4. `_target_` by exact name ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["hyenadna.checkpoint.torch.load", "hyenadna.run.os.system",
                                    "torch.optim.AdamW.__init__.__globals__", "lightning.pytorch.Trainer.fit",
                                    "builtins.eval", "${oc.env:EVIL}"])
def test_a_target_outside_the_allow_list_is_refused_before_anything_runs(tmp_path: Path, target: str) -> None:
    cfg = make_cfg(tmp_path / "out", "experiment=smoke")
    with open_dict(cfg):
        cfg.callbacks.evil = {"_target_": target, "f": "payload.pkl", "weights_only": False}
    with pytest.raises(ValueError, match="is not allowed"):
        fit(cfg)
    assert not (tmp_path / "out").exists()


def test_a_target_from_the_command_line_is_checked_too(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "experiment=smoke", "+callbacks.x._target_=hyenadna.checkpoint.torch.load",
                   "+callbacks.x.f=evil.pkl", "+callbacks.x.weights_only=false")
    with pytest.raises(ValueError, match="callbacks.x: _target_ 'hyenadna.checkpoint.torch.load' is not allowed"):
        check_targets(cfg)


# -- 8. one line per user error ----------------------------------------------------------------


def test_bad_values_and_files_are_named_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config `optimizer.lr` must be a number, got 'fast'"):
        fit(make_cfg(tmp_path / "a", "experiment=smoke", "optimizer.lr=fast"))
    with pytest.raises(ValueError, match=r"config `scheduler.warmup_fraction` must be a number"):
        fit(make_cfg(tmp_path / "b", "experiment=smoke", "scheduler.warmup_fraction=soon"))
    (tmp_path / "ckpts").write_text("a file")
    with pytest.raises(FileExistsError, match=r"checkpoint folder .*ckpts \(callbacks.checkpoint.dirpath\) is a file"):
        fit(make_cfg(tmp_path / "c", "experiment=smoke", f"callbacks.checkpoint.dirpath={tmp_path / 'ckpts'}"))
    assert not (tmp_path / "c" / "metrics.csv").exists()  # refused before training


def test_user_errors_are_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    def full_disk(cfg):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "last.ckpt"))

    with pytest.raises(SystemExit) as exit_:
        run_and_report(full_disk, OmegaConf.create({}), "train.py")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err == f"train.py: error: {tmp_path / 'checkpoints' / 'last.ckpt'}: no space left on the device\n"
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_and_report(lambda cfg: {}["x"], OmegaConf.create({}), "train.py")


def test_train_py_prints_one_line_for_a_bad_value(tmp_path: Path) -> None:
    proc = subprocess.run(train_cmd(tmp_path, "optimizer.lr=fast"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "train.py: error: config `optimizer.lr` must be a number, got 'fast'"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".hydra_run").exists()  # Hydra's run folder held only .hydra/ and train.log: removed
    assert tmp_path.is_dir()  # the output folder was there before the run: kept


def test_holds_no_results_sees_only_hydras_bookkeeping_as_empty(tmp_path: Path) -> None:
    from hyenadna.run import holds_no_results

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "train.log").write_text("[..][lightning][INFO] - GPU available: False\n")
    (tmp_path / "checkpoints").mkdir()
    assert holds_no_results(tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert not holds_no_results(tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    (tmp_path / "notes.txt").write_text("the user's")
    assert not holds_no_results(tmp_path)


def test_a_finetuning_run_with_a_missing_file_leaves_no_empty_timestamped_folder(tmp_path: Path) -> None:
    """Hydra's timestamped folder (it holds .hydra/ and finetune.log by the time the run starts) is
    removed when the run fails before writing anything (train.py: the bad-value test above)."""
    run = tmp_path / "outputs" / "finetune" / "2026-01-01_00-00-00"
    proc = subprocess.run([sys.executable, str(ROOT / "finetune.py"), "experiment=ft_smoke", f"hydra.run.dir={run}",
                           "pretrained=missing.ckpt"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune.py: error: pretrained=missing.ckpt: checkpoint not found: missing.ckpt"), last
    assert not run.exists() and run.parent.is_dir()


def test_a_failed_start_removes_the_output_folders_it_made_and_keeps_the_others(tmp_path: Path, capsys) -> None:
    new = tmp_path / "new" / "run"  # both new/ and new/run/ are made by the run, and removed again
    with pytest.raises(SystemExit):
        run_and_report(fit, make_cfg(new, "experiment=smoke", "optimizer.lr=fast"), "train.py")
    assert "optimizer.lr" in capsys.readouterr().err and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # the user's folder stays, empty or not
    with pytest.raises(SystemExit):
        run_and_report(fit, make_cfg(tmp_path / "mine", "experiment=smoke", "optimizer.lr=fast"), "train.py")
    assert (tmp_path / "mine").is_dir()


# -- 6. no NaN passes as a finetuning result -----------------------------------------------------


def test_finite_or_none_gives_strict_json() -> None:
    from hyenadna.run import finite_or_none

    result = {"test": {"acc": 0.5, "pearson": float("nan")}, "icl": [{"acc": float("inf")}], "n": 3}
    text = json.dumps(finite_or_none(result), allow_nan=False)
    assert json.loads(text) == {"test": {"acc": 0.5, "pearson": None}, "icl": [{"acc": None}], "n": 3}


@pytest.mark.parametrize(("problem", "labels", "message"), [
    ("regression", ["1.5", "nan"], "reads as a missing value"),
    ("regression", ["1.5", "inf"], "not a finite number"),
    ("regression", ["1.5", "-Infinity"], "not a finite number"),
    ("single_label", ["a", "nan"], "reads as a missing value"),
    ("single_label", ["a", "NA"], "reads as a missing value"),
])
def test_missing_and_non_finite_targets_are_refused(problem: str, labels: list[str], message: str) -> None:
    from hyenadna.tasks import build_task
    from hyenadna.tokenizer import CharTokenizer

    train = [("ACGT", (labels[i % 2],), f"train.csv:{i + 2}") for i in range(8)]
    raw = {"train": train, "test": train[:2]}
    with pytest.raises(ValueError, match=rf"train.csv:3: .*{message}"):
        build_task(raw, problem, ["label"], CharTokenizer(), valid_fraction=0.25, seed=0)


def test_finetuning_that_diverges_stops_with_an_error(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from hyenadna.adapt import FinetuneModule
    from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM

    torch.manual_seed(0)
    lm = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=1, d_inner=32, l_max=34))
    module = FinetuneModule(lm, 2, "single_label", method="full", readout="head", pooling="mean",
                            optimizer=lambda params: torch.optim.SGD(params, lr=1e6))
    batches = [{"input_ids": torch.randint(7, 11, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,))} for _ in range(20)]
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="training loss became nan .* Lower method.lr"):
        trainer.fit(module, DataLoader(batches, batch_size=None))


def test_resumed_in_place_rows_survive_a_second_kill(tmp_path: Path, uninterrupted) -> None:
    """Kill, resume in place, kill again, resume again: still the uninterrupted run's rows."""
    ref, ref_result = uninterrupted
    out = tmp_path / "run"
    overrides = ("trainer.max_steps=60", "callbacks.checkpoint.last_every_n_steps=2")
    for at_step in (10, 30):
        extra = (f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",) if at_step > 10 else ()
        proc = start_and_wait(train_cmd(out, *overrides, *extra), out, at_step=at_step)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert last_step(out) < 60
    resumed = fit(make_cfg(out, *DROPOUT, *overrides, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"))
    assert metrics_rows(out) == metrics_rows(ref)
    assert resumed["val_loss"] == ref_result["val_loss"]
    assert os.listdir(out / "checkpoints") == ["last.ckpt"]


def test_a_checkpoint_write_left_by_a_killed_run_is_removed_before_training(tmp_path: Path, capsys) -> None:
    """kill -9 during a checkpoint write leaves `.last.ckpt.tmp-<hex>`; the next run in that folder
    removes it before training (and nothing else: the checkpoint and the user's files stay)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.ckpt.tmp-0123456789ab"
    stale.write_bytes(b"half a checkpoint")
    (folder / "last.ckpt").write_bytes(b"the checkpoint")
    (folder / ".notes.tmp-mine").write_text("the user's")
    check_checkpoint_dirs([pl.callbacks.ModelCheckpoint(dirpath=str(folder))])
    assert sorted(p.name for p in folder.iterdir()) == [".notes.tmp-mine", "last.ckpt"]
    assert str(stale) in capsys.readouterr().out
