"""Pretraining entry point: `fit(cfg)` builds everything from a Hydra config, trains, reports.

Order of work, so that bad input fails in seconds: check the config's keys, the output folder,
the model/data lengths, the files (the datamodule opens FASTA and BED), the checkpoint's
architecture; only then train. The output folder receives ``config.yaml`` (resolved),
``checkpoints/``, ``metrics.csv``, ``loss_curves.png``; the run ends by printing the validation
perplexity next to order-k Markov baselines fitted on the training intervals and scored on the
very same validation windows.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from hyenadna.baselines import MarkovBaseline
from hyenadna.compile import compile_model
from hyenadna.genome import Genome
from hyenadna.lm import CausalLMModule, check_same_architecture
from hyenadna.model import Block, HyenaConfig, count_parameters
from hyenadna.pretrain_data import PretrainDataModule
from hyenadna.run import (
    RunInterrupted,
    build,
    build_loggers,
    check_checkpoint_dirs,
    check_optimizer,
    metrics_csv,
    plot_loss_curves,
    prepare_resumed_metrics,
    record_run_config,
    runtime_callbacks,
    start_run,
    use_atomic_checkpoints,
)

TOP_LEVEL_KEYS = frozenset({"model", "data", "trainer", "logger", "optimizer", "scheduler", "callbacks",
                            "baseline", "seed", "output_dir", "ckpt_path", "experiment_name", "torch_threads",
                            "global_batch_size", "compile", "cpu_huge_pages", "cpu_keep_freed_memory",
                            "cpu_reuse_buffers"})


def derive_accumulation(global_batch_size: int, batch_size: int, world_size: int, configured: int) -> int:
    """Gradient accumulation = global batch / (per-device batch x devices x nodes), exactly."""
    if configured != 1:
        raise ValueError(f"set either global_batch_size ({global_batch_size}) or trainer.accumulate_grad_batches "
                         f"({configured}), not both")
    per_step = batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of data.batch_size={batch_size} "
                         f"x {world_size} device(s)")
    return global_batch_size // per_step


def check_checkpoint(ckpt_path: str, config: HyenaConfig) -> None:
    """The checkpoint exists, loads safely and was written for this architecture."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"ckpt_path {path} cannot be loaded without running pickled code, which is refused "
                         f"({reason})") from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"ckpt_path {path} is not a loadable checkpoint: {reason}") from None
    if "hyena_config" not in ckpt:
        raise ValueError(f"ckpt_path {path} is not a hyenadna pretraining checkpoint (no 'hyena_config')")
    check_same_architecture(ckpt["hyena_config"], config.to_dict(), f"checkpoint {path}")


def fsdp_strategy(**kwargs: Any) -> pl.strategies.FSDPStrategy:
    """Lightning FSDP wrapping each Hyena block as one shard unit (a class set cannot be written in YAML)."""
    return pl.strategies.FSDPStrategy(auto_wrap_policy={Block}, **kwargs)


def markov_baselines(dm: PretrainDataModule, orders: list[int]) -> dict[int, float]:
    """Perplexity of order-k Markov models fitted on the train intervals (both strands) on the valid windows."""
    tok = dm.tokenizer
    train_seqs = []
    for source, intervals in zip(dm.sources, dm.intervals["train"]):
        genome = Genome(source.fasta, cache_dir=dm.cache_dir)
        for iv in intervals:
            ids = tok.encode(genome.fetch(iv.chrom, iv.start, iv.end))
            train_seqs += [ids, tok.reverse_complement(ids)]  # the model sees both strands too (RC augmentation)
    assert dm.val_dataset is not None
    val_items = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
    return {k: MarkovBaseline(k).fit(train_seqs).perplexity(val_items) for k in orders}


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain as `cfg` says and return the final metrics (val loss/ppl/acc, Markov baselines, paths)."""
    out = start_run(cfg, TOP_LEVEL_KEYS, resume_from=cfg.ckpt_path or None)

    config = build(cfg.model, "model")
    if not isinstance(config, HyenaConfig):
        raise ValueError(f"config `model` must build a HyenaConfig, got {type(config).__name__}")
    dm = build(cfg.data, "data")
    if not isinstance(dm, PretrainDataModule):
        raise ValueError(f"config `data` must build a PretrainDataModule, got {type(dm).__name__}")
    # Pretraining inputs are bare bases (no CLS/SEP), so a window needs max_length <= l_max positions.
    for name, length in (("data.max_length", dm.max_length), ("data.val_max_length", dm.val_max_length)):
        if length > config.l_max:
            raise ValueError(f"{name}={length} exceeds the model's l_max={config.l_max}; "
                             f"use a model with l_max >= {length} or shorter windows")
    dm.prepare_data()
    dm.setup("fit")  # opens every FASTA/BED now: missing files and bad intervals fail before training
    if cfg.ckpt_path:
        check_checkpoint(str(cfg.ckpt_path), config)

    optimizer = build(cfg.optimizer, "optimizer")
    check_optimizer(optimizer)
    scheduler = build(cfg.scheduler, "scheduler") if cfg.scheduler is not None else None
    module = CausalLMModule(config, optimizer=optimizer, scheduler=scheduler, seed=int(cfg.seed))
    if cfg.get("compile", False):
        compile_model(module.model)
    callbacks = [build(node, f"callbacks.{name}") for name, node in (cfg.callbacks or {}).items() if node is not None]
    callbacks += runtime_callbacks(cfg)
    check_checkpoint_dirs(callbacks)
    loggers = build_loggers(cfg, out)
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, default_root_dir=str(out))
    use_atomic_checkpoints(trainer)
    if cfg.get("global_batch_size"):
        trainer.accumulate_grad_batches = derive_accumulation(int(cfg.global_batch_size), dm.batch_size,
                                                              trainer.world_size, trainer.accumulate_grad_batches)
    if trainer.is_global_zero:
        if cfg.ckpt_path and (note := prepare_resumed_metrics(out, cfg.ckpt_path)):
            print(note)
        record_run_config(cfg, out, trainer.loggers)
        print(f"model: {count_parameters(module.model):,} parameters ({config.d_model=}, {config.n_layer=}, "
              f"{config.l_max=}); output folder: {out}")

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path or None, weights_only=True)
    except RunInterrupted as err:
        raise RunInterrupted(f"{err}; continue it with `python train.py <the same overrides> "
                             f"ckpt_path={err.checkpoint} output_dir={out}`", err.signum, err.checkpoint) from None
    train_time = time.perf_counter() - start
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")
    final = trainer.validate(module, datamodule=dm, verbose=False)[0]

    result: dict[str, Any] = {
        "val_loss": float(final["val/loss"]), "val_ppl": float(final["val/ppl"]), "val_acc": float(final["val/acc"]),
        "global_step": int(trainer.global_step), "train_time_s": train_time, "output_dir": str(out),
        "num_parameters": count_parameters(module.model),
    }
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None:
        result["last_checkpoint"] = getattr(ckpt_cb, "last_model_path", "") or ""
        result["best_checkpoint"] = getattr(ckpt_cb, "best_model_path", "") or ""
    if not trainer.is_global_zero:
        return result

    csv_path = metrics_csv(trainer)
    if csv_path is not None and csv_path.is_file():
        plot_loss_curves(csv_path, out / "loss_curves.png", reference=(math.log(4), "uniform over ACGT"))
        result["metrics_csv"], result["plot"] = str(csv_path), str(out / "loss_curves.png")

    orders = list(cfg.baseline.markov_orders) if cfg.get("baseline") else []
    if orders:
        markov = markov_baselines(dm, orders)
        best = min(markov, key=markov.get)
        result["markov_ppl"] = markov
        result["best_markov_order"], result["best_markov_ppl"] = best, markov[best]
    n_val = len(dm.val_dataset) if dm.val_dataset is not None else 0
    lines = [f"validation perplexity on {n_val} held-out windows of {dm.val_max_length} bases "
             f"(after {trainer.global_step} optimizer steps, {train_time / 60:.1f} min):",
             f"  HyenaDNA ({result['num_parameters']:,} parameters)   {result['val_ppl']:.3f}"]
    for k, ppl in result.get("markov_ppl", {}).items():
        lines.append(f"  Markov order-{k} baseline{' (best)' if k == result['best_markov_order'] else '':7}  {ppl:.3f}")
    if orders:
        beaten = [k for k in orders if result["val_ppl"] < result["markov_ppl"][k]]
        not_beaten = [k for k in orders if k not in beaten]
        verdict = f"beats the Markov baseline of order {', '.join(map(str, beaten))}" if beaten else \
            "beats no Markov baseline"
        lines.append(f"the model {verdict}" + (f"; not order {', '.join(map(str, not_beaten))}" if not_beaten else ""))
        result["beats_markov_orders"] = beaten
    print("\n".join(lines))
    return result
