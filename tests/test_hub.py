"""Released weights by name: Hugging Face Hub ids and short names resolve through a local HF cache.

No network: each test lays out a Hugging Face cache folder (models--owner--name/refs/...,
snapshots/<commit>/...) under tmp_path, as `huggingface_hub.snapshot_download` leaves it, and
runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hyenadna import load_pretrained
from hyenadna.checkpoint import RELEASED_MODELS, hub_repo_id, read_checkpoint
from hyenadna.finetune import load_language_model
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from test_checkpoint import write_hf  # noqa: E402  (the -hf layout, written once for both test files)

REPO = Path(__file__).resolve().parents[1]
CFG = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8)
MAIN, OLD = "a" * 40, "b" * 40  # commit hashes of two snapshots
TINY = "LongSafari/hyenadna-tiny-1k-seqlen-hf"


def make_model(seed: int) -> HyenaDNAForCausalLM:
    torch.manual_seed(seed)
    return HyenaDNAForCausalLM(CFG).eval()


def add_snapshot(cache: Path, repo_id: str, commit: str, model: HyenaDNAForCausalLM, refs: tuple[str, ...] = (),
                 fmt: str = "safetensors") -> Path:
    """One -hf snapshot of `model` in the cache layout of huggingface_hub; `refs` (main, tags) point at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = write_hf(model, repo / "snapshots" / commit, fmt)
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache, used offline (huggingface_hub read HF_HUB_CACHE when it was imported: patch both)."""
    from huggingface_hub import constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def logits(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(ids).logits


IDS = torch.randint(7, 12, (2, 40), generator=torch.Generator().manual_seed(1))


def test_names_that_are_hub_ids_and_names_that_are_paths() -> None:
    assert hub_repo_id("hyenadna-tiny-1k-seqlen") == TINY
    assert hub_repo_id("LongSafari/hyenadna-small-32k-seqlen-hf") == "LongSafari/hyenadna-small-32k-seqlen-hf"
    assert set(RELEASED_MODELS.values()) >= {TINY, "LongSafari/hyenadna-large-1m-seqlen-hf"}
    for path in ("runs/best.ckpt", "out/model.safetensors", "./a/b", "../a/b", "/abs/x", "a/b/c", "nope", "a/../b"):
        assert hub_repo_id(path) is None, path


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_released_name_and_hub_id_load_from_the_cache_offline(cache: Path, fmt: str) -> None:
    model = make_model(0)
    snap = add_snapshot(cache, TINY, MAIN, model, refs=("main",), fmt=fmt)
    for name in ("hyenadna-tiny-1k-seqlen", TINY):
        loaded = load_pretrained(name)
        assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    ckpt = read_checkpoint("hyenadna-tiny-1k-seqlen")
    assert ckpt.layout == "hf" and ckpt.source.parent == snap
    assert f"Hugging Face Hub {TINY} at revision main" in ckpt.notes[0]


def test_revision_pins_a_commit_or_tag(cache: Path) -> None:
    new, old = make_model(0), make_model(1)
    add_snapshot(cache, TINY, MAIN, new, refs=("main",))
    add_snapshot(cache, TINY, OLD, old, refs=("v1",))
    assert torch.equal(logits(load_pretrained(TINY), IDS), logits(new, IDS))
    for rev in (OLD, "v1"):
        assert torch.equal(logits(load_pretrained(TINY, revision=rev), IDS), logits(old, IDS))
    assert not torch.equal(logits(old, IDS), logits(new, IDS))


def test_offline_without_the_snapshot_says_what_to_fetch(cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained("hyenadna-small-32k-seqlen")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("checkpoint not found: hyenadna-small-32k-seqlen is no local file or folder",
                 "LongSafari/hyenadna-small-32k-seqlen-hf", "revision main", "HF_HUB_OFFLINE",
                 "`hf download LongSafari/hyenadna-small-32k-seqlen-hf`", "local folder"):
        assert part in msg, part
    add_snapshot(cache, TINY, MAIN, make_model(0), refs=("main",))
    with pytest.raises(FileNotFoundError, match=f"{TINY} \\(revision v9\\).*--revision v9"):
        load_pretrained(TINY, revision="v9")


def test_local_paths_come_first_and_missing_ones_are_named(cache: Path, tmp_path: Path, monkeypatch) -> None:
    model = make_model(2)
    add_snapshot(cache, TINY, MAIN, make_model(0), refs=("main",))
    monkeypatch.chdir(tmp_path)
    model.save_pretrained(Path(TINY))  # a local folder spelled like the Hub id wins over the Hub
    assert torch.equal(logits(load_pretrained(TINY), IDS), logits(model, IDS))
    with pytest.raises(ValueError, match="revision='v1' is for a Hugging Face Hub id, but .* is a local"):
        load_pretrained(TINY, revision="v1")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: runs/best.ckpt \(no such file or folder"):
        load_pretrained("runs/best.ckpt")


def test_finetune_pretrained_takes_a_released_name_and_a_revision(cache: Path, tmp_path: Path) -> None:
    new, old = make_model(0), make_model(1)
    add_snapshot(cache, TINY, MAIN, new, refs=("main",))
    add_snapshot(cache, TINY, OLD, old)
    lm, source = load_language_model(OmegaConf.create({"pretrained": "hyenadna-tiny-1k-seqlen",
                                                       "pretrained_revision": None}), tmp_path)
    assert torch.equal(logits(lm, IDS), logits(new, IDS)) and source == "hyenadna-tiny-1k-seqlen"
    lm, _ = load_language_model(OmegaConf.create({"pretrained": "hyenadna-tiny-1k-seqlen",
                                                  "pretrained_revision": OLD}), tmp_path)
    assert torch.equal(logits(lm, IDS), logits(old, IDS))
    with pytest.raises(FileNotFoundError, match="pretrained=hyenadna-medium-160k-seqlen: .*HF_HUB_OFFLINE"):
        load_language_model(OmegaConf.create({"pretrained": "hyenadna-medium-160k-seqlen"}), tmp_path)
    with pytest.raises(ValueError, match="pretrained_revision=v1 is for a Hugging Face Hub pretrained=, but "
                                         "pretrained=scratch"):
        load_language_model(OmegaConf.create({"pretrained": "scratch", "pretrained_revision": "v1"}), tmp_path)


def test_cli_reads_the_cache_named_by_the_environment(cache: Path, tmp_path: Path) -> None:
    """End to end in a fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them."""
    add_snapshot(cache, TINY, MAIN, make_model(0), refs=("main",))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "hyenadna.cli", "convert", "hyenadna-tiny-1k-seqlen",
                          str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "hf layout" in run.stdout and f"Hugging Face Hub {TINY}" in run.stdout
    run = subprocess.run([sys.executable, "-m", "hyenadna.cli", "convert", "hyenadna-large-1m-seqlen",
                          str(tmp_path / "out2")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "hf download LongSafari/hyenadna-large-1m-seqlen-hf" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
