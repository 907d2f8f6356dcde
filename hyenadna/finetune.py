"""Finetuning entry point: `fit(cfg)` adapts a pretrained HyenaDNA to a labelled task.

Order of work: read and check the task data, load (or quickly pretrain) the language model,
check that the task (and soft prompt) fits its l_max, then train with the best checkpoint kept by
a validation metric and early stopping, evaluate that checkpoint on test, fit the k-mer logistic
regression floor (`hyenadna.baselines.KmerLogistic`) on the same examples, and write
``results.json`` and ``loss_curves.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from hyenadna.adapt import FinetuneModule, default_monitor, label_token_ids
from hyenadna.baselines import KmerLogistic
from hyenadna.checkpoint import load_pretrained
from hyenadna.compile import compile_model
from hyenadna.files import write_text_atomic
from hyenadna.icl import check_prompt_length, evaluate_icl
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.run import (
    build,
    build_loggers,
    check_checkpoint_dirs,
    check_optimizer,
    finite_or_none,
    metrics_csv,
    plot_loss_curves,
    record_run_config,
    runtime_callbacks,
    start_run,
    use_atomic_checkpoints,
)
from hyenadna.tasks import TaskDataModule
from hyenadna.tokenizer import CharTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG_DIR = REPO_ROOT / "configs" / "train"  # the quick pretraining composes train.yaml
TOP_LEVEL_KEYS = frozenset({"task", "method", "model", "trainer", "logger", "optimizer", "scheduler", "pretrained",
                            "pretrained_revision", "pretrain_overrides", "early_stopping_patience", "baseline", "monitor",
                            "monitor_mode", "icl_shots", "seed",
                            "output_dir", "experiment_name", "torch_threads", "compile",
                            "cpu_huge_pages", "cpu_keep_freed_memory", "cpu_reuse_buffers"})


def resolve_path(path: str) -> str:
    """A relative path that does not exist from the working directory is tried from the repository root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return path


# Settings of the finetuning run that its quick pretraining keeps: process-wide ones (start_run
# applies them again from the pretraining config) and whether to draw a progress bar.
INHERITED_KEYS = ("torch_threads", "cpu_huge_pages", "cpu_keep_freed_memory", "cpu_reuse_buffers",
                  "trainer.enable_progress_bar")


def inherited_overrides(cfg: DictConfig) -> list[str]:
    """`INHERITED_KEYS` of a finetuning config as train.yaml overrides (the ones it sets)."""
    out = []
    for key in INHERITED_KEYS:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value != "<absent>":
            out.append(f"++{key}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}")
    return out


def compose_train_config(overrides: list[str]) -> DictConfig:
    """configs/train/train.yaml with `overrides`, as `python train.py` composes it, also from inside
    `python finetune.py` (whose Hydra searches configs/finetune, which has no train.yaml)."""
    running = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(TRAIN_CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        if running is not None:  # give `python finetune.py` its own Hydra back
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def quick_pretrain(overrides: list[str], out: Path) -> str:
    """Run `hyenadna.pretrain.fit` on configs/train/train.yaml with `overrides`; return its last checkpoint."""
    from hyenadna.pretrain import fit as pretrain_fit

    overrides = [*overrides, f"output_dir={out}"]
    cfg = compose_train_config(overrides)
    print(f"no pretrained= given: pretraining first with `python train.py {' '.join(overrides[:-1])}` into {out}")
    result = pretrain_fit(cfg)
    ckpt = result.get("last_checkpoint") or ""
    if not ckpt:
        raise RuntimeError(f"the quick pretraining in {out} wrote no checkpoint")
    return ckpt


def load_language_model(cfg: DictConfig, out: Path) -> tuple[HyenaDNAForCausalLM, str]:
    """The language model to adapt, and a description of where it came from."""
    source = cfg.pretrained
    if cfg.get("pretrained_revision") is not None and source in (None, "scratch"):
        raise ValueError(f"pretrained_revision={cfg.pretrained_revision} is for a Hugging Face Hub pretrained=, "
                         f"but pretrained={source}")
    if source == "scratch":
        config = build(cfg.model, "model")
        if not isinstance(config, HyenaConfig):
            raise ValueError(f"config `model` must build a HyenaConfig, got {type(config).__name__}")
        return HyenaDNAForCausalLM(config), "scratch (random init)"
    if source is None:
        source = quick_pretrain([*inherited_overrides(cfg), *(cfg.pretrain_overrides or [])], out / "pretrain")
    path = resolve_path(str(source))
    revision = cfg.get("pretrained_revision")
    try:  # a local file or folder, else a Hugging Face Hub id or released name (load_pretrained)
        lm = load_pretrained(path, task="causal_lm", revision=None if revision is None else str(revision))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"pretrained={source}: {err}") from None
    if lm.config.vocab_size < CharTokenizer.vocab_size:
        raise ValueError(f"pretrained={source}: the model's vocabulary has {lm.config.vocab_size} tokens, "
                         f"fewer than the tokenizer's {CharTokenizer.vocab_size}")
    return lm, str(path)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per split, one column per metric."""
    names = sorted({k for r in rows.values() for k in r})
    lines = [f"{'split':8}" + "".join(f"{n:>10}" for n in names)]
    for split, r in rows.items():
        lines.append(f"{split:8}" + "".join(f"{r[n]:>10.4f}" if n in r else f"{'':>10}" for n in names))
    return "\n".join(lines)


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Finetune as `cfg` says; return test (and best validation) metrics and the output paths."""
    out = start_run(cfg, TOP_LEVEL_KEYS)

    # 1. The data: every file read and checked before any model is built or trained.
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    for key in ("data", "label_table", "reference"):
        if task_cfg.get(key):
            task_cfg[key] = resolve_path(str(task_cfg[key]))
    dm = build(OmegaConf.create(task_cfg), "task")
    if not isinstance(dm, TaskDataModule):
        raise ValueError(f"config `task` must build a TaskDataModule, got {type(dm).__name__}")
    task = dm.load()
    m = cfg.method
    if m.readout == "token" and task.problem_type != "single_label":
        raise ValueError(f"method.readout=token is for single-label classification; this task is {task.problem_type}")

    # 2. The model, and the room its l_max leaves for the task's sequences.
    lm, source = load_language_model(cfg, out)
    n_prompt = int(m.n_soft_tokens)
    add_eos = m.readout == "token"
    limit = lm.config.l_max - n_prompt
    if limit < 1 + int(add_eos):
        raise ValueError(f"method.n_soft_tokens={n_prompt} leaves no room in the model's l_max={lm.config.l_max}")
    task_length = int(dm.max_length) if dm.max_length is not None else task.longest + int(add_eos)
    if n_prompt and task_length > limit:
        # A prompt never silently crops the task's sequences: the user chooses which to shorten.
        raise ValueError(f"method.n_soft_tokens={n_prompt} prompt tokens do not fit beside the task: its length is "
                         f"{task_length} tokens ({'task.max_length' if dm.max_length is not None else 'longest sequence'}"
                         f"{' + [SEP]' if add_eos and dm.max_length is None else ''}) and the model's l_max={lm.config.l_max} "
                         f"leaves room for at most {max(lm.config.l_max - task_length, 0)} prompt tokens; use fewer "
                         f"prompt tokens, or crop the sequences with task.max_length<={limit}")
    max_length = dm.resolve_max_length(limit, add_eos=add_eos)
    if task.longest + int(add_eos) > max_length:
        print(f"note: sequences up to {task.longest} bases are cropped ({dm.crop}) to {max_length} tokens "
              f"(model l_max {lm.config.l_max}, soft prompt {n_prompt})")
    icl_length = max_length - int(add_eos)
    if cfg.get("icl_shots"):
        if task.problem_type != "single_label":
            raise ValueError("icl_shots: in-context evaluation is for single-label classification")
        label_token_ids(task.num_labels, list(m.label_tokens) if m.label_tokens else None)
        for k in cfg.icl_shots:
            check_prompt_length(lm.config.l_max, int(k), task.num_labels, icl_length)
    dm.setup("fit")

    optimizer = build(cfg.optimizer, "optimizer")
    check_optimizer(optimizer)
    scheduler = build(cfg.scheduler, "scheduler") if cfg.scheduler is not None else None
    init_seq = None
    if n_prompt:  # a real training sequence for prompt_init=sequence, drawn with the run's seed
        train_ids = dm.datasets["train"].ids
        pick = int(np.random.default_rng(int(cfg.seed)).integers(len(train_ids)))
        init_seq = torch.as_tensor(train_ids[pick][:-1] if add_eos else train_ids[pick])
    module = FinetuneModule(lm, task.num_labels, task.problem_type, method=m.name, readout=m.readout,
                            pooling=m.pooling, n_soft_tokens=n_prompt, prompt_dropout=float(m.prompt_dropout),
                            prompt_position=str(m.get("prompt_position", "prefix")),
                            prompt_init=str(m.get("prompt_init", "noise")), prompt_init_sequence=init_seq,
                            label_tokens=list(m.label_tokens) if m.label_tokens else None,
                            optimizer=optimizer, scheduler=scheduler, label_names=task.label_names)
    if cfg.get("compile", False):
        compile_model(module)  # the module's own blocks: the head read-out copies the backbone into a new model
    monitor, mode = default_monitor(task.problem_type) if cfg.monitor == "auto" else (cfg.monitor, cfg.get("monitor_mode", "max"))
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=monitor,
                                           mode=mode, save_top_k=1, save_last=False)
    callbacks: list[pl.Callback] = [ckpt_cb, *runtime_callbacks(cfg)]
    if cfg.early_stopping_patience:
        callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                    patience=int(cfg.early_stopping_patience)))
    check_checkpoint_dirs(callbacks)
    loggers = build_loggers(cfg, out)
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, default_root_dir=str(out))
    use_atomic_checkpoints(trainer)
    if trainer.is_global_zero:
        record_run_config(cfg, out, trainer.loggers)
        print(f"task {dm.data} ({task.problem_type}, {task.num_labels} labels: {', '.join(task.label_names[:10])})")
        print(dm.summary())
        print(f"model: {source}; d_model={lm.config.d_model} n_layer={lm.config.n_layer} l_max={lm.config.l_max}; "
              f"max_length={max_length}; {module.trainable_summary()}")

    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, weights_only=True)
    train_time = time.perf_counter() - start
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")
    best = ckpt_cb.best_model_path or None
    valid = trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)[0]
    test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)[0]
    for split, metrics in (("valid", valid), ("test", test)):
        loss = next((float(v) for k, v in metrics.items() if k.endswith("/loss")), 0.0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the {split} loss of the best checkpoint is {loss}: the model diverged "
                                     f"(lower method.lr) or the {split} data holds values it cannot score")
    strip = lambda d, p: {k[len(p):]: float(v) for k, v in d.items() if k.startswith(p)}  # noqa: E731
    result: dict[str, Any] = {
        "test": strip(test, "test/"), "valid": strip(valid, "val/"), "method": m.name, "readout": m.readout,
        "n_soft_tokens": n_prompt, "pretrained": source, "task": str(dm.data), "label_names": task.label_names,
        "max_length": max_length, "train_time_s": train_time, "epochs": int(trainer.current_epoch),
        "best_checkpoint": best or "", "output_dir": str(out),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }
    csv_path = metrics_csv(trainer)
    if csv_path is not None and csv_path.is_file():
        result["metrics_csv"] = str(csv_path)
    if m.name == "soft_prompt" or n_prompt:
        result.update(prompt_position=str(m.get("prompt_position", "prefix")),
                      prompt_init=str(m.get("prompt_init", "noise")))
    kmer_sizes = list(cfg.baseline.kmer_sizes) if cfg.get("baseline") and cfg.baseline.get("kmer_sizes") else []
    if kmer_sizes and task.problem_type == "single_label":
        # The same cropped examples the model saw ([SEP] is not a base: skipped by the k-mers).
        train_ds, test_ds = dm.datasets["train"], dm.datasets["test"]
        kmer = KmerLogistic(kmer_sizes).fit(train_ds.ids, train_ds.labels, task.num_labels)
        result["kmer_baseline_acc"] = kmer.accuracy(test_ds.ids, test_ds.labels)
        result["kmer_sizes"] = kmer_sizes
    if cfg.get("icl_shots"):
        # The language model as it now stands: pretrained (head read-out), adapted (token read-out).
        result["icl"] = [evaluate_icl(lm, task.splits["train"], task.splits["test"], task.num_labels, int(k),
                                      icl_length, label_tokens=list(m.label_tokens) if m.label_tokens else None,
                                      seed=int(cfg.seed), limit=200)
                         for k in cfg.icl_shots]
    undefined = [f"{split}/{k}" for split in ("valid", "test") for k, v in result[split].items() if not math.isfinite(v)]
    if undefined and trainer.is_global_zero:
        print(f"note: {', '.join(undefined)} undefined on this data (e.g. one class only); written as null")
    if trainer.is_global_zero:
        if csv_path is not None and csv_path.is_file():
            plot_loss_curves(csv_path, out / "loss_curves.png", ylabel="task loss", metric=monitor)
            result["plot"] = str(out / "loss_curves.png")
        write_text_atomic(out / "results.json", json.dumps(finite_or_none(result), indent=2, allow_nan=False) + "\n")
        print(f"\n{m.name} ({m.readout} read-out) on {dm.data}, best checkpoint by {monitor}:")
        print(format_table({"valid": result["valid"], "test": result["test"]}))
        if "kmer_baseline_acc" in result:
            acc = result["test"].get("acc", float("nan"))
            verdict = "beats" if acc > result["kmer_baseline_acc"] else "does NOT beat"
            print(f"  k-mer logistic regression baseline ({'/'.join(map(str, kmer_sizes))}-mer counts) test acc "
                  f"{result['kmer_baseline_acc']:.4f}; the model ({acc:.4f}) {verdict} it")
        print(f"results: {out / 'results.json'}")
    return result
