"""Finetune a pretrained HyenaDNA on a labelled task: `python finetune.py pretrained=<ckpt> [task=... method=...]`."""

import hydra
from omegaconf import DictConfig

from hyenadna.finetune import fit


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    """Run `hyenadna.finetune.fit`; it prints the test table and writes results.json."""
    fit(cfg)


if __name__ == "__main__":
    main()
