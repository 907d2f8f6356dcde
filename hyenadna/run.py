"""What every training run shares (train.py and finetune.py): config checks, the output folder,
loggers, and checkpoints that survive a kill.

* `check_targets`: a Hydra ``_target_`` may only name a callable of `ALLOWED_TARGETS`, by its
  exact dotted name (Hydra would import and call anything a YAML file or a command line names).
* `prepare_output_dir`: a folder that already holds a run is never overwritten; it can only be
  resumed in place, from one of its own checkpoints, and then its metrics are appended to.
* `RunCheckpoint`: ``last.ckpt`` every N optimizer steps and on SIGINT / SIGTERM (at the end of
  the step in progress), written atomically by `AtomicCheckpointIO`; `CSVLogger` writes every
  row as it is logged and keeps the rows of the run being resumed.
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from hyenadna.compile import check_compile_flag
from hyenadna.files import atomic_write, describe_os_error, remove_stale_temporaries, write_text_atomic
from hyenadna.ops.buffers import buffer_pool
from hyenadna.runtime import (ThreadShare, available_cores, check_switch, huge_pages_state, jobs, keep_freed_memory,
                              resolve_threads, thread_settings)

# Every callable a config may instantiate, by exact dotted name. A prefix rule is not enough:
# Hydra resolves `hyenadna.checkpoint.torch.load` through the module's attributes.
ALLOWED_TARGETS = frozenset({
    # this package
    "hyenadna.model.HyenaConfig", "hyenadna.model.HyenaConfig.preset",
    "hyenadna.optim.cosine_warmup_scheduler",
    "hyenadna.pretrain.fsdp_strategy",
    "hyenadna.pretrain_data.PretrainDataModule",
    "hyenadna.tasks.TaskDataModule",
    "hyenadna.warmup.SequenceLengthWarmup",
    "hyenadna.run.RunCheckpoint", "hyenadna.run.CSVLogger",
    # optimizers (configured `_partial_`, built on hyenadna.optim's parameter groups)
    *(f"torch.optim.{name}" for name in ("AdamW", "Adam", "SGD", "Adagrad", "Adadelta", "Adamax", "Adafactor",
                                          "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD")),
    # Lightning: the trainer, strategies, loggers and the callbacks that take no code
    "lightning.pytorch.Trainer",
    *(f"lightning.pytorch.strategies.{name}" for name in ("DDPStrategy", "FSDPStrategy", "DeepSpeedStrategy",
                                                           "SingleDeviceStrategy")),
    *(f"lightning.pytorch.loggers.{name}" for name in ("CSVLogger", "WandbLogger", "TensorBoardLogger",
                                                        "MLFlowLogger", "CometLogger")),
    *(f"lightning.pytorch.callbacks.{name}" for name in (
        "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "ModelSummary", "RichModelSummary",
        "RichProgressBar", "TQDMProgressBar", "DeviceStatsMonitor", "Timer", "StochasticWeightAveraging",
        "GradientAccumulationScheduler", "EMAWeightAveraging")),
})


def check_targets(node: Any, where: str = "") -> None:
    """Every `_target_` in `node` must be one of `ALLOWED_TARGETS`, spelled exactly."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            target = node._get_node("_target_")._value()  # unresolved: an interpolation is refused too
            if not isinstance(target, str) or target not in ALLOWED_TARGETS:
                raise ValueError(f"config {where or '<root>'}: _target_ {target!r} is not allowed; a config may "
                                 f"name only the callables of hyenadna.run.ALLOWED_TARGETS, spelled exactly")
        for key in node:
            check_targets(node._get_node(key), f"{where}.{key}" if where else str(key))
    elif OmegaConf.is_list(node):
        for i, item in enumerate(node):
            check_targets(node._get_node(i), f"{where}[{i}]")


def _check_value_types(node: DictConfig, group: str) -> None:
    """A text value for a parameter whose default is a number (`optimizer.lr=fast`) is refused
    naming the key, instead of surfacing later as a TypeError deep inside torch."""
    try:
        from hydra.utils import get_object

        target = get_object(node._target_)
        params = inspect.signature(target).parameters
    except (ValueError, TypeError, ImportError, AttributeError):
        return
    for key, value in node.items():
        if key.startswith("_") or key not in params or not isinstance(value, str):
            continue
        default = params[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ValueError(f"config `{group}.{key}` must be a number, got {value!r}")


def build(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """instantiate() with the config group named in any error (a typo'd key reads as a TypeError)."""
    if isinstance(node, DictConfig) and "_target_" in node:
        _check_value_types(node, group)
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # Hydra wraps the constructor's error; unwrap it for the user
        cause = err.__cause__ or err
        raise ValueError(f"config `{group}` is invalid: {cause}") from None


def finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN / inf float replaced by None, so it serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def check_optimizer(factory: Callable[..., torch.optim.Optimizer], group: str = "optimizer") -> None:
    """Build the configured optimizer once on a dummy parameter, so a bad value stops the run now."""
    try:
        factory([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as err:
        raise ValueError(f"config `{group}` is invalid: {err}") from None


# --------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------

# What a run writes into its folder; any of them means the folder holds a run.
RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints", "results.json", "loss_curves.png", "hparams.yaml")


def run_files(out: Path) -> list[str]:
    """The files of a previous run in `out` (an empty `checkpoints/` does not count)."""
    found = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            if any(p.iterdir()):
                found.append(name + "/")
        elif p.exists() or p.is_symlink():
            found.append(name)
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _startup_rank() -> int:
    """This process's global rank as the launcher's environment gives it (0 when not distributed)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


# Folders `prepare_output_dir` created in this process (the outermost new one of each path); a run
# that fails before writing anything into its folder leaves none of them behind (`run_and_report`).
_created_run_dirs: list[Path] = []


def holds_no_results(folder: Path) -> bool:
    """True when `folder` holds nothing but Hydra's bookkeeping (``.hydra/``, the job's ``.log``)
    and empty folders: what a run that failed before writing anything leaves."""
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if rel.parts[:1] == (".hydra",):
            continue
        if any(Path(root, d).is_symlink() for d in dirs):
            return False
        if any(not (rel == Path(".") and f.endswith(".log") and Path(root, f).is_file()) for f in files):
            return False
    return True


def _discard_unused_run_folders() -> None:
    """Remove the folders this run created (Hydra's timestamped one, new output folders) that hold no
    result: a failed start leaves no empty ``outputs/<name>/<time>/`` behind. Never the working
    folder or one above it."""
    folders = list(_created_run_dirs)
    _created_run_dirs.clear()
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            folders.append(Path(HydraConfig.get().runtime.output_dir))
    except Exception:  # noqa: BLE001 - no Hydra run: nothing of Hydra's to remove
        pass
    cwd = Path.cwd().resolve()
    for folder in dict.fromkeys(folders):
        if not folder.is_dir() or folder.is_symlink() or _inside(cwd, folder) or not holds_no_results(folder):
            continue
        for handler in list(logging.getLogger().handlers):  # Hydra's job log lies in it: stop writing there
            if isinstance(handler, logging.FileHandler) and _inside(Path(handler.baseFilename), folder):
                handler.close()
                logging.getLogger().removeHandler(handler)
        shutil.rmtree(folder, ignore_errors=True)


def prepare_output_dir(path: str | os.PathLike[str], resume_from: str | os.PathLike[str] | None = None) -> Path:
    """Create the output folder and prove it is writable; refuse one that holds another run.

    A folder with a previous run's files is accepted only to resume that run in place, i.e.
    when `resume_from` is one of its own checkpoints. Raises PermissionError (not writable) or
    FileExistsError (holds a run) naming the folder.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {out} exists and is not a folder")
    # Only the first process judges: in a multi-process run the others start when (Lightning's
    # launcher) or while (torchrun, SLURM) it writes the run's first files.
    previous = run_files(out) if out.is_dir() and _startup_rank() == 0 else []
    if previous and not (resume_from is not None and _inside(Path(resume_from), out)):
        last = out / "checkpoints" / "last.ckpt"
        how = (f"resume it with `ckpt_path={last} output_dir={out}`" if last.is_file() else
               f"resume it from one of its checkpoints with `ckpt_path={out}/checkpoints/<file> output_dir={out}`")
        raise FileExistsError(f"output_dir {out} already holds a run ({', '.join(previous)}) and would be "
                              f"overwritten: {how}, or choose a new output_dir")
    try:
        if not out.exists():
            created = next((p for p in [out, *out.parents] if p.exists()), None)
            top = out if created is None else next(p for p in [out, *out.parents] if p.parent == created)
            out.mkdir(parents=True, exist_ok=True)
            _created_run_dirs.append(top)  # run_and_report removes it again if the run fails before writing to it
        probe = out / f".write_test_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {out} is not writable: {err.strerror or err}") from None
    return out


def check_checkpoint_dirs(callbacks: list[pl.Callback]) -> None:
    """Every checkpoint folder is a folder (or can be made one), before training rather than after."""
    for cb in callbacks:
        dirpath = getattr(cb, "dirpath", None) if isinstance(cb, pl.callbacks.ModelCheckpoint) else None
        if dirpath is None:
            continue
        p = Path(dirpath)
        if p.exists() and not p.is_dir():
            raise FileExistsError(f"checkpoint folder {p} (callbacks.checkpoint.dirpath) is a file; "
                                  "remove it or choose another output_dir")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"checkpoint folder {p} cannot be created: {err.strerror or err}") from None
        # A run killed while writing a checkpoint leaves its temporary file; before training no
        # process of this run writes here (another run in this folder is refused or resumed).
        for stale in remove_stale_temporaries(p):
            print(f"removed {stale}: a checkpoint write that a killed run left unfinished")


def save_config(cfg: DictConfig, out: Path, resolve: bool) -> None:
    """Write config.yaml; a resumed run keeps the one it replaces as config.<k>.yaml if it differs."""
    path = out / "config.yaml"
    text = OmegaConf.to_yaml(cfg, resolve=resolve)
    if path.is_file() and path.read_text() != text:
        k = 1
        while (out / f"config.{k}.yaml").exists():
            k += 1
        shutil.copy2(path, out / f"config.{k}.yaml")
    write_text_atomic(path, text)


# --------------------------------------------------------------------------------------------
# Metrics: a CSV that a resumed run appends to
# --------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a metrics.csv, without a last row cut short by a kill (no newline)."""
    with open(path, newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # rows are appended whole; a killed append leaves a partial one
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def write_metrics(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """Write a metrics.csv atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def carry_metrics(source: Path, dest: Path, before_step: int) -> int:
    """Start `dest` (a resumed run's metrics.csv) with the rows of `source` logged before
    `before_step`; rows from after the checkpoint are dropped, the resumed run logs them again.
    Returns the number of rows kept. `source` may be `dest` (resume in place)."""
    header, rows = read_metrics(source)
    kept = [r for r in rows if r.get("step", "") != "" and int(r["step"]) < before_step]
    write_metrics(dest, header, kept)
    return len(kept)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus deleting an existing metrics.csv (the run folder was checked
    by `prepare_output_dir`: an existing file is the history of the run being resumed), with
    its header adopted and the rewrite for new columns done atomically."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        path = Path(self.metrics_file_path)
        if path.is_file():
            self.metrics_keys = sorted(read_metrics(path)[0])

    def _check_log_dir_exists(self) -> None:
        pass

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        write_metrics(path, fieldnames, read_metrics(path)[1])


class CSVLogger(pl.loggers.CSVLogger):
    """metrics.csv that keeps the rows of a resumed run and writes each row when it is logged
    (`flush_logs_every_n_steps=1`), so a killed run loses none of the rows before its checkpoint.

    A step's row is normally logged after the batch-end hooks, where a periodic ``last.ckpt`` is
    written: `RunCheckpoint` therefore writes the row first (`write_row_ahead`), and the logger
    skips the same step when Lightning logs it afterwards.
    """

    def __init__(self, save_dir: str, name: str | None = "", version: str | int | None = "",
                 flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps,
                         **kwargs)
        self._written_ahead: int | None = None

    def write_row_ahead(self, metrics: dict[str, Any], step: int) -> None:
        """Write step's row now, before Lightning logs it (which is then skipped)."""
        self.log_metrics(metrics, step)
        self.save()
        self._written_ahead = step

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:  # type: ignore[override]
        """Lightning's row, unless `write_row_ahead` already wrote this step's."""
        if step is not None and step == self._written_ahead:
            self._written_ahead = None
            return
        super().log_metrics(metrics, step)

    @property
    def experiment(self) -> _AppendingWriter:  # type: ignore[override]
        """The writer (made on first use)."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# --------------------------------------------------------------------------------------------
# Checkpoints that survive a kill
# --------------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written into a temporary file beside the target, fsynced and renamed: a kill or
    a full disk leaves the previous checkpoint, never a truncated one (Lightning's own save goes
    through the system temp folder, and a copy when that is another filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        """Write `checkpoint` to `path` atomically."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        # Serialised in memory first (as Lightning does): torch.save's zip writer reports a failed
        # write as a RuntimeError ('unexpected pos'), a plain write as the OSError it is.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(buffer.getbuffer())


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Give the trainer's strategy `AtomicCheckpointIO` where it uses the plain torch one."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class RunInterrupted(RuntimeError):
    """Training stopped on SIGINT / SIGTERM after saving its state; `exit_code` is 128 + signal."""

    def __init__(self, message: str, signum: int, checkpoint: str = "") -> None:
        super().__init__(message)
        self.signum, self.exit_code, self.checkpoint = signum, 128 + signum, checkpoint


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is kept current: every `last_every_n_steps` optimizer
    steps, at every epoch end and at the end of training, whatever `save_top_k` says.

    The first SIGINT (Ctrl-C) or SIGTERM lets the optimizer step in progress finish, saves
    ``last.ckpt`` and stops the run with `RunInterrupted` before the next step starts; a second
    one stops at once. In multi-process runs the ranks agree on the step to stop at.
    """

    def __init__(self, *args: Any, last_every_n_steps: int | None = None, save_on_signal: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and (isinstance(last_every_n_steps, bool)
                                               or not isinstance(last_every_n_steps, int) or last_every_n_steps < 1):
            raise ValueError(f"last_every_n_steps must be a number of optimizer steps >= 1 or null, "
                             f"got {last_every_n_steps!r}")
        self.last_every_n_steps = last_every_n_steps
        self.save_on_signal = save_on_signal
        self._requested: int | None = None  # the signal received, not yet acted on
        self._stop: RunInterrupted | None = None  # raised when the next step would start
        self._stop_pending = False  # the ranks agreed to stop at this step
        self._previous: dict[int, Any] = {}
        self._step_seen = -1
        self._at_epoch_end = False
        self._epoch_end_step = -1  # the step of the last epoch-end save

    # -- signals ---------------------------------------------------------------------------

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._requested is not None:  # a second signal: stop now, without saving
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._requested = signum
        name = signal.Signals(signum).name
        print(f"\n{name} received: finishing this step, then saving a checkpoint and stopping "
              f"(send {name} again to stop at once)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the signal handlers (main thread only: Python allows no other)."""
        self._requested, self._stop, self._stop_pending, self._step_seen = None, None, False, trainer.global_step
        if self.save_on_signal and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    # -- saving ----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Stop before a new step once a signal's checkpoint is written (the previous step's
        metrics row is logged by then; stopping through `should_stop` would run a validation)."""
        if self._stop is not None:
            raise self._stop

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Lightning's step-triggered saves; at the end of an optimizer step, ``last.ckpt`` every
        `last_every_n_steps` and when a signal asked to stop."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._step_seen:
            return  # inside a gradient-accumulation window: only whole steps are saved
        self._step_seen = trainer.global_step
        stop = self._requested is not None
        if self.save_on_signal and trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        periodic = bool(self.last_every_n_steps) and trainer.global_step % self.last_every_n_steps == 0
        self._stop_pending = stop
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and self._saves_at_epoch_end(trainer):
            return  # the epoch-end save follows, after the epoch's validation: a resume point that keeps it
        if (periodic or stop) and not self._should_skip_saving_checkpoint(trainer):
            _write_step_row_ahead(trainer)  # a kill right after the save must not lose this step's row
            self._save_last_or_named(trainer)
        if stop:
            self._stop_after_save(trainer)

    def _saves_at_epoch_end(self, trainer: pl.Trainer) -> bool:
        return bool(self.save_last) and self._should_save_on_train_epoch_end(trainer)

    def _stop_after_save(self, trainer: pl.Trainer) -> None:
        signum = self._requested if self._requested is not None else signal.SIGTERM
        self._stop = RunInterrupted(f"{signal.Signals(signum).name}: training stopped after optimizer step "
                                    f"{trainer.global_step} and saved {self._last_checkpoint_saved}",
                                    signum, self._last_checkpoint_saved)

    def _save_last_or_named(self, trainer: pl.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)
        else:
            self._save_checkpoint(trainer, self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's epoch-end save, and ``last.ckpt`` too (Lightning writes it only together
        with a top-k file, i.e. never with save_top_k=0), also where this step was saved at its
        batch end: resuming from the epoch end does not repeat the epoch's validation."""
        self._at_epoch_end = True
        try:
            super().on_train_epoch_end(trainer, pl_module)
            skip = (bool(trainer.fast_dev_run) or trainer.sanity_checking
                    or self._epoch_end_step == trainer.global_step)
            if self._saves_at_epoch_end(trainer) and not skip:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._at_epoch_end = False
        if self._stop_pending and self._stop is None:
            self._stop_after_save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``last.ckpt`` holds the final state (Lightning's own final save happens only when
        nothing was saved before); then the signal handlers go back."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A failed run saves nothing more (its state may be mid-step or NaN); handlers go back."""
        self._restore_handlers()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """An epoch-end checkpoint stores Lightning's logging counter as a step-end one would.

        Lightning counts a step for logging only after its batch-end hooks, and adds that step
        back when it restores a checkpoint; at epoch end the step is already counted, so a run
        resumed from there would log every later row one step late.
        """
        if not self._at_epoch_end:
            return
        self._epoch_end_step = trainer.global_step
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict")
        if isinstance(loop, dict) and "_batches_that_stepped" in loop:
            loop["_batches_that_stepped"] -= 1


def _write_step_row_ahead(trainer: pl.Trainer) -> None:
    """Have our CSV loggers write the row Lightning will log for this optimizer step, now: the
    same metrics, epoch and step label as its logger connector gives them after the batch-end
    hooks (nothing where this step logs no row, `log_every_n_steps`)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    connector = trainer._logger_connector
    if not loggers or not (connector.should_update_logs or trainer.fast_dev_run):
        return
    metrics = convert_tensors_to_scalars(connector.metrics["log"])
    if not metrics:
        return
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in loggers:
        logger.write_row_ahead(metrics, int(step))


def resume_step(ckpt_path: str | os.PathLike[str]) -> int:
    """The number of optimizer steps a Lightning checkpoint was taken after."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def prepare_resumed_metrics(out: Path, ckpt_path: str | os.PathLike[str]) -> str | None:
    """Give a resumed run's metrics.csv the history before its checkpoint: the run's own rows
    when resuming in place, else those of the run folder the checkpoint lies in (when it has
    one). Returns a line saying what was done, or None."""
    ckpt = Path(ckpt_path)
    source = next((p / "metrics.csv" for p in ckpt.resolve().parents if (p / "metrics.csv").is_file()
                   and (p / "checkpoints").is_dir() and _inside(ckpt, p)), None)
    if source is None:
        return None
    step = resume_step(ckpt)
    dest = out / "metrics.csv"
    kept = carry_metrics(source, dest, step)
    where = "kept" if source.resolve() == dest.resolve() else f"copied from {source}"
    return f"metrics.csv: {kept} rows logged before step {step} {where}; the resumed run appends to them"


# --------------------------------------------------------------------------------------------
# Loss curves (train.py and finetune.py write loss_curves.png)
# --------------------------------------------------------------------------------------------


def robust_ylim(train: list[float], others: list[float]) -> tuple[float, float]:
    """Y-limits that show the curves rather than the first steps' spike: the train losses after
    the first tenth of the points (at least one point dropped when there are 4+), up to their
    99th percentile, always including every point of `others` (validation)."""
    skip = max(1, len(train) // 10) if len(train) >= 4 else 0
    tail = sorted(train[skip:])
    values = list(others)
    if tail:
        values += [tail[0], tail[min(len(tail) - 1, int(0.99 * (len(tail) - 1) + 0.5))]]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    return lo - pad, hi + pad


def plot_loss_curves(metrics_csv: Path, png: Path, ylabel: str = "cross-entropy (nats / base)",
                     reference: tuple[float, str] | None = None, metric: str | None = None) -> tuple[float, float]:
    """Train (per logged step) and validation loss against optimizer step as a PNG, y-range by
    `robust_ylim`; `reference` (value, label) a dotted line; `metric` (e.g. ``val/acc``) a second
    panel, the validation metric per epoch. Returns the loss panel's y-limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: list[tuple[int, float]] = []
    val: list[tuple[int, float]] = []
    per_epoch: list[tuple[int, float]] = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                train.append((int(row["step"]), float(row["train/loss"])))
            if row.get("val/loss"):
                val.append((int(row["step"]), float(row["val/loss"])))
            if metric and row.get(metric) and row.get("epoch", "") != "":
                per_epoch.append((int(float(row["epoch"])), float(row[metric])))
    panels = 2 if metric else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="valid loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    refs = [reference[0]] if reference else []
    ylim = robust_ylim([v for _, v in train], [v for _, v in val] + refs)
    ax.set_ylim(*ylim)
    if reference:
        ax.axhline(reference[0], color="grey", ls=":", label=reference[1])
    ax.legend()
    ax.grid(alpha=0.3)
    if metric:
        ax2 = axes[0][1]
        if per_epoch:
            ax2.plot(*zip(*per_epoch), "o-", color="C2")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(f"validation {metric.split('/')[-1]}")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return ylim


# --------------------------------------------------------------------------------------------
# Loggers and the start of a run
# --------------------------------------------------------------------------------------------


def wandb_must_be_offline(timeout_s: float = 2.0) -> str | None:
    """Why wandb has to run offline (no API key, or api.wandb.ai unreachable), or None."""
    if not os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY is not set"
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=timeout_s).close()
    except OSError:
        return "api.wandb.ai is unreachable"
    return None


def build_loggers(cfg: DictConfig, out: Path) -> list[pl.loggers.Logger]:
    """Instantiate `cfg.logger` (a mapping name -> logger); wandb goes offline when it must."""
    loggers = []
    for name, node in (cfg.logger or {}).items():
        if node is None:
            continue
        kwargs: dict[str, Any] = {}
        if str(node.get("_target_", "")).endswith("WandbLogger") and not node.get("offline", False):
            reason = wandb_must_be_offline()
            if reason:
                print(f"wandb: {reason}; logging offline to {out}/wandb (sync later with `wandb sync`)")
                kwargs["offline"] = True
        loggers.append(build(node, f"logger.{name}", **kwargs))
    return loggers


def record_run_config(cfg: DictConfig, out: Path, loggers: list[pl.loggers.Logger]) -> None:
    """What train.py and finetune.py both record at the start of a run (rank 0): the resolved
    config as ``<out>/config.yaml`` (`save_config`), and the same resolved config as the run
    config of every logger but the CSV one (wandb's config panel, TensorBoard's hparams), whose
    record is that config.yaml beside its metrics.csv."""
    save_config(cfg, out, resolve=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        if not isinstance(logger, pl.loggers.CSVLogger):
            logger.log_hyperparams(resolved)


def metrics_csv(trainer: pl.Trainer) -> Path | None:
    """The metrics.csv the run's CSV logger writes (``<output_dir>/metrics.csv``), if it has one."""
    return next((Path(lg.log_dir) / "metrics.csv" for lg in trainer.loggers
                 if isinstance(lg, pl.loggers.CSVLogger)), None)


class ThreadShareCallback(pl.Callback):
    """`torch_threads: auto` through the run, not only at its start (`hyenadna.runtime.ThreadShare`):
    before a training batch, at most every `interval_s`, the share of the cores is recomputed from
    the hyenadna jobs running now and applied, with a line saying so."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.share = ThreadShare(interval_s)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if (threads := self.share.update()) is not None:
            print(f"threads: intra-op {threads} now ({self.share.processes} job(s) share {available_cores()} cores)",
                  flush=True)


def runtime_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks every run gets from its runtime settings: `ThreadShareCallback` under
    `torch_threads: auto`."""
    return [ThreadShareCallback()] if cfg.get("torch_threads") == "auto" else []


def start_run(cfg: DictConfig, known_keys: frozenset[str], resume_from: str | None = None) -> Path:
    """Checks shared by train.py and finetune.py before any work: top-level keys, `_target_`s, the
    true/false switches, the output folder (`prepare_output_dir`); then threads, memory settings
    (huge pages were requested by the entry point before any tensor existed: here only checked)
    and seeds. Returns the output folder."""
    unknown = sorted(set(cfg) - known_keys)
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; known: {sorted(known_keys)}")
    check_targets(cfg)
    check_compile_flag(cfg.get("compile", False))
    huge = check_switch("cpu_huge_pages", cfg.get("cpu_huge_pages", True))
    keep = check_switch("cpu_keep_freed_memory", cfg.get("cpu_keep_freed_memory", False))
    reuse = check_switch("cpu_reuse_buffers", cfg.get("cpu_reuse_buffers", True))
    out = prepare_output_dir(cfg.output_dir, resume_from)
    jobs.register()  # other jobs' `torch_threads: auto` counts this one (until run_and_report returns)
    threads = resolve_threads(cfg.get("torch_threads"))
    if threads is not None:
        torch.set_num_threads(threads)
    print(thread_settings(), flush=True)
    if huge and not (state := huge_pages_state())[0]:
        warnings.warn(f"cpu_huge_pages=true has no effect: {state[1]}", RuntimeWarning, stacklevel=2)
    if keep and (why := keep_freed_memory()):
        warnings.warn(f"cpu_keep_freed_memory=true has no effect: {why}", RuntimeWarning, stacklevel=2)
    buffer_pool.release()  # a previous run's buffers, in this process
    buffer_pool.enable(reuse)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return out


# Errors that mean "the input or the machine is not right", not "the code is wrong": reported in
# one line. Anything else keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def _not_from_lightning(record: logging.LogRecord) -> bool:
    return not (record.name == "lightning" or record.name.startswith("lightning."))


def log_lightning_once() -> None:
    """Each Lightning log line once on the console when Hydra has configured logging.

    `import lightning` gives the ``lightning`` logger a console handler of its own and leaves it
    propagating to the root logger, where Hydra's job logging puts a console and a file handler:
    every INFO line was printed twice. Hydra's console handlers now skip Lightning's records, which
    still reach Hydra's log file (``<run>/train.log``, ``<run>/finetune.log``).
    """
    if not any(type(h) is logging.StreamHandler for h in logging.getLogger("lightning").handlers):
        return  # no console handler of Lightning's own: Hydra's is the only one that shows its lines
    for handler in logging.getLogger().handlers:
        # Exactly StreamHandler: not a FileHandler (a subclass), nor pytest's capture handlers.
        if type(handler) is logging.StreamHandler and _not_from_lightning not in handler.filters:
            handler.addFilter(_not_from_lightning)


def run_and_report(fit: Callable[[DictConfig], Any], cfg: DictConfig, prog: str) -> Any:
    """Call `fit(cfg)` for an entry point, with each Lightning log line printed once
    (`log_lightning_once`): a user error becomes one line on stderr and exit status 1, an
    interrupted run exits 128 + signal after saying how to resume (HYDRA_FULL_ERROR=1 shows the
    traceback instead). A run that fails before writing anything leaves no folder behind
    (`_discard_unused_run_folders`)."""
    log_lightning_once()
    _created_run_dirs.clear()
    try:
        try:
            return fit(cfg)
        except BaseException:
            _discard_unused_run_folders()  # only folders holding nothing (an interrupted run has its checkpoint)
            raise
        finally:
            _created_run_dirs.clear()
            jobs.unregister()
    except RunInterrupted as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = describe_os_error(err) if isinstance(err, OSError) and not isinstance(
            err, (FileNotFoundError, FileExistsError, PermissionError)) else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
