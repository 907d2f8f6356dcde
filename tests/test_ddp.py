"""DDP through Lightning: `train.py` with 2 CPU processes (gloo) runs, agrees across ranks, checkpoints."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from hyenadna.runtime import thp_mode

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "train.py", "experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "baseline.markov_orders=[]", f"hydra.run.dir={out}"]
    # Without the variable in the environment: train.py sets it before Lightning's import allocates.
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation perplexity" in proc.stdout
    if thp_mode() in ("always", "madvise"):
        assert "cpu_huge_pages=true has no effect" not in proc.stderr, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train/seq_len"]]
    # The warmup's stages ran on both ranks: 4 steps at 64, then 128 (global batch = 2 x per-device).
    assert [float(r["train/seq_len"]) for r in rows][:5] == [64.0] * 4 + [128.0]
