"""Pretrain HyenaDNA: `python train.py [group=option ...] [key=value ...]` (configs/train/train.yaml)."""

import os

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs/train", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; all the work is in `hyenadna.pretrain.fit`."""
    # torch_threads: auto with HYENADNA_JOBS > 1 (or several local processes) shares the cores:
    # idle OpenMP threads then sleep instead of spinning on cores another job needs. Not for a job
    # alone: sleeping threads cost it 15-50% (benchmarks/README.md). libgomp reads this once, when
    # torch loads: set it before the first hyenadna import (which imports torch).
    jobs = int(os.environ.get("HYENADNA_JOBS", "1") or 1) * int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if cfg.get("torch_threads") == "auto" and jobs > 1:
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
