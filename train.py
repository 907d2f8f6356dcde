"""Pretrain HyenaDNA: `python train.py [group=option ...] [key=value ...]` (configs/train/train.yaml)."""

import os

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs/train", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; all the work is in `hyenadna.pretrain.fit`."""
    # torch_threads: auto shares the cores with other jobs: idle OpenMP threads then sleep instead
    # of spinning on cores another job needs. libgomp reads this once, when torch loads: set it
    # before the first hyenadna import (which imports torch).
    if cfg.get("torch_threads") == "auto":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from hyenadna.runtime import check_switch, use_huge_pages

    # Before Lightning is imported: its import allocates tensors, and PyTorch reads the huge-page
    # setting at its first allocation (hyenadna/runtime.py).
    use_huge_pages(check_switch("cpu_huge_pages", cfg.get("cpu_huge_pages", True)))
    from hyenadna.pretrain import fit
    from hyenadna.run import run_and_report

    run_and_report(fit, cfg, "train.py")


if __name__ == "__main__":
    main()
