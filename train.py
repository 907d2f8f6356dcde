"""Pretrain HyenaDNA: `python train.py [group=option ...] [key=value ...]` (configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

from hyenadna.pretrain import fit


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; all the work is in `hyenadna.pretrain.fit`."""
    fit(cfg)


if __name__ == "__main__":
    main()
