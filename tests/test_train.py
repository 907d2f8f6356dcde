"""End-to-end pretraining: smoke run, checkpoints, exact resume, golden losses, configs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.pretrain import fit
from hyenadna.run import ALLOWED_TARGETS, check_targets

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"  # train.py's configs (model/, trainer/, logger/ are shared)
GOLDEN = Path(__file__).parent / "assets" / "golden_losses.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(tmp: Path, *overrides: str) -> DictConfig:
    """Compose configs/train/train.yaml as `python train.py <overrides>` would, writing into `tmp`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp}", *overrides])


def train_losses(out: Path) -> dict[int, float]:
    """{optimizer step (1-based): train loss} from the run's metrics.csv."""
    losses = {}
    with open(out / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["train/loss"]:
                losses[int(row["step"]) + 1] = float(row["train/loss"])
    return losses


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    return out, fit(make_cfg(out, "experiment=smoke"))


def test_smoke_run_writes_outputs_and_a_loadable_checkpoint(smoke_run: tuple[Path, dict]) -> None:
    out, result = smoke_run
    for name in ("config.yaml", "metrics.csv", "loss_curves.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert result["global_step"] == 12
    assert 1.0 < result["val_ppl"] < 16.0 and result["best_markov_order"] == 3
    resolved = OmegaConf.load(out / "config.yaml")
    assert resolved.data.max_length == 128 and "${" not in OmegaConf.to_yaml(resolved)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    model = HyenaDNAForCausalLM(HyenaConfig.from_dict(ckpt["hyena_config"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    ids = torch.randint(7, 11, (1, 32))
    assert torch.isfinite(model.eval()(ids).logits).all()
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]  # it learns


def test_golden_losses(smoke_run: tuple[Path, dict]) -> None:
    """First 12 train losses of `python train.py experiment=smoke` (seed 2222) against the committed ones.

    Regenerate after an intended change to the model, data or recipe with:
        python train.py experiment=smoke hydra.run.dir=/tmp/smoke
        python -c "import csv,json; r=[x for x in csv.DictReader(open('/tmp/smoke/metrics.csv')) if x['train/loss']]; \
json.dump({'command': 'python train.py experiment=smoke', 'losses': [round(float(x['train/loss']), 5) for x in r]}, \
open('tests/assets/golden_losses.json', 'w'), indent=1)"
    """
    out, _ = smoke_run
    golden = json.loads(GOLDEN.read_text())["losses"]
    got = [train_losses(out)[s] for s in range(1, len(golden) + 1)]
    diff = [(s + 1, g, x, x - g) for s, (g, x) in enumerate(zip(golden, got)) if abs(x - g) > 2e-3 + 1e-3 * abs(g)]
    assert not diff, "losses differ from tests/assets/golden_losses.json (step, golden, now, diff):\n" + "\n".join(
        f"  {s:3d} {g:.5f} {x:.5f} {d:+.5f}" for s, g, x, d in diff)


def metrics_rows(out: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock column (tokens/s), as the exact strings written."""
    with open(out / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "train/tokens_per_s"} for row in csv.DictReader(f)]


def test_resume_mid_warmup_continues_the_same_loss_curve(tmp_path: Path) -> None:
    # Stage 64 for 8 steps, then 128; every epoch (4 steps) keeps a checkpoint. Resuming from the
    # step-4 one (an epoch end, inside stage 0) in a new folder must reproduce the uninterrupted
    # run: the earlier rows are carried over, the later ones computed again, bit for bit.
    common = ("experiment=smoke", "callbacks.seq_warmup.stage_duration=8", "baseline.markov_orders=[]",
              "callbacks.checkpoint.save_top_k=-1")
    full = fit(make_cfg(tmp_path / "full", *common))
    ckpt = tmp_path / "full" / "checkpoints" / "step000004.ckpt"
    resumed = fit(make_cfg(tmp_path / "resumed", *common, f"ckpt_path={ckpt}"))
    assert metrics_rows(tmp_path / "resumed") == metrics_rows(tmp_path / "full")
    assert sorted(train_losses(tmp_path / "resumed")) == list(range(1, 13))
    assert resumed["val_loss"] == full["val_loss"]


def _all_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


PRETRAIN_EXPERIMENTS = _all_options("experiment")  # finetune.py's are in configs/finetune (test_finetune.py)


def test_pretraining_experiments_are_found() -> None:
    assert {"smoke", "chrx_15min", "chrx_15min_plain", "hg38_tiny_1k", "hg38_large_1m"} <= set(PRETRAIN_EXPERIMENTS)


@pytest.mark.parametrize("experiment", ["null", *PRETRAIN_EXPERIMENTS])
def test_every_experiment_composes_and_instantiates(tmp_path: Path, experiment: str) -> None:
    cfg = make_cfg(tmp_path, *([] if experiment == "null" else [f"experiment={experiment}"]))
    check_targets(cfg)
    config = instantiate(cfg.model)
    assert isinstance(config, HyenaConfig)
    dm = instantiate(cfg.data)
    assert dm.max_length <= config.l_max
    opt = instantiate(cfg.optimizer)(HyenaDNAForCausalLM(HyenaConfig(d_model=8, n_layer=1)).parameters())
    if cfg.scheduler is not None:
        instantiate(cfg.scheduler)(opt, total_steps=10)
    for node in cfg.callbacks.values():
        if node is not None:
            instantiate(node)


@pytest.mark.parametrize("group", ["model", "data", "trainer", "logger"])
def test_every_group_option_composes_and_instantiates(tmp_path: Path, group: str) -> None:
    for option in _all_options(group):
        cfg = make_cfg(tmp_path, f"{group}={option}")
        check_targets(cfg)
        node = cfg[group]
        if group == "trainer":
            strategy = node.strategy
            if isinstance(strategy, DictConfig):
                instantiate(strategy)
            with open_dict(node):  # no GPU here: build the same trainer on CPU
                node.accelerator, node.precision, node.devices, node.strategy = "cpu", "32-true", 1, "auto"
            instantiate(node, logger=False)
        elif group == "logger":
            for lg in node.values():
                instantiate(lg, **({"offline": True} if "Wandb" in lg._target_ else {}))
        else:
            instantiate(node)


def test_targets_only_point_into_allowed_packages() -> None:
    targets = [line.split(":", 1)[1].strip() for p in (ROOT / "configs").rglob("*.yaml")
               for line in p.read_text().splitlines() if line.strip().startswith("_target_:")]
    assert targets and all(t in ALLOWED_TARGETS for t in targets), targets
    with pytest.raises(ValueError, match="not allowed"):
        check_targets(OmegaConf.create({"x": {"_target_": "os.system", "_args_": ["true"]}}))


def test_typos_and_invalid_values_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException):
        make_cfg(tmp_path, "trainer.max_stepz=5")
    cases = [
        ("data.bach_size", 4, ValueError, "bach_size"),
        ("model.d_modle", 4, ValueError, "d_modle"),
        ("learning_rate", 1.0, ValueError, "unknown top-level"),
        ("data.max_length", 4096, ValueError, "l_max"),
        ("output_dir", str(tmp_path / "file.txt" / "out"), PermissionError, "not writable"),
        ("data.genomes", [{"name": "x", "fasta": str(tmp_path / "missing.fa")}], FileNotFoundError, "missing.fa"),
    ]
    (tmp_path / "file.txt").write_text("a file, not a folder")
    for key, value, error, message in cases:
        cfg = make_cfg(tmp_path / "out", "experiment=smoke")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, force_add=True)
        with pytest.raises(error, match=message):
            fit(cfg)


def test_checkpoint_of_another_model_size_is_refused(smoke_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = smoke_run
    cfg = make_cfg(tmp_path, "experiment=smoke", "model.d_model=64", "model.d_inner=256",
                   f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(ValueError, match="d_model: checkpoint .* has 32, config has 64"):
        fit(cfg)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        fit(make_cfg(tmp_path, "experiment=smoke", f"ckpt_path={tmp_path / 'nope.ckpt'}"))
