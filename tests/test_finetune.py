"""finetune.py end to end: configs compose, a smoke pretraining checkpoint finetunes, bad input fails early."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hyenadna.finetune import REPO_ROOT, fit
from hyenadna.run import check_targets
from hyenadna.pretrain import fit as pretrain_fit
from hyenadna.tasks import TaskDataModule

CONFIGS = str(REPO_ROOT / "configs" / "finetune")  # finetune.py's configs
TRAIN_CONFIGS = str(REPO_ROOT / "configs" / "train")
METHODS = sorted(p.stem for p in (REPO_ROOT / "configs" / "finetune" / "method").glob("*.yaml"))
TASKS = sorted(p.stem for p in (REPO_ROOT / "configs" / "finetune" / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO_ROOT / "configs" / "finetune" / "experiment").glob("*.yaml"))


def finetune_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="finetune", overrides=list(overrides))


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real train.py checkpoint: helper `fit` with the smoke experiment (d32, l_max 130, 12 steps)."""
    out = tmp_path_factory.mktemp("pretrain")
    with initialize_config_dir(config_dir=TRAIN_CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=smoke", f"output_dir={out}", "logger=none"])
    return pretrain_fit(cfg)["last_checkpoint"]


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    rng = random.Random(0)
    root = tmp_path / "task"
    root.mkdir()
    for split, n in (("train", 24), ("test", 8)):
        rows = ["seq\ty"]
        for i in range(n):
            # Class 1 is GC-rich: learnable, so the metrics are not all chance.
            alphabet = "GGCCAT" if i % 2 else "AATTGC"
            rows.append(f"{''.join(rng.choice(alphabet) for _ in range(rng.randint(20, 60)))}\t{i % 2}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASKS)
def test_configs_compose_and_targets_are_safe(tmp_path: Path, method: str, task: str) -> None:
    extra = [] if task == "species" else [f"task.data={tmp_path}"] + (["task.reference=x.fa"] if task == "bed" else [])
    cfg = finetune_cfg(f"method={method}", f"task={task}", f"output_dir={tmp_path}", *extra)
    check_targets(cfg)
    assert cfg.method.name in ("soft_prompt", "linear_probe", "full")
    if task == "species":
        dm = instantiate(cfg.task)
        assert isinstance(dm, TaskDataModule)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_finetune_experiments_compose(tmp_path: Path, experiment: str) -> None:
    check_targets(finetune_cfg(f"experiment={experiment}", f"output_dir={tmp_path}"))


def test_shipped_species_task_loads() -> None:
    dm = TaskDataModule(str(REPO_ROOT / "data" / "species"), format="fasta")
    task = dm.load()
    assert task.label_names == ["ecoli", "human", "pfalciparum", "saureus", "vcholerae"]
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 2000, "valid": 500, "test": 1000}
    assert not task.valid_carved and task.longest == 256


def test_species_pretraining_corpus_holds_train_ranges_only() -> None:
    """The unlabelled corpus behind `python finetune.py`'s quick pretraining is the train range of
    each genome: every labelled train fragment is in it, every valid/test fragment lies outside its
    coordinates, and only genomic repeats (rRNA operons, IS elements) recur in it verbatim."""
    import gzip

    def records(path: Path) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith(">"):
                    name = line[1:].strip()
                    out[name] = []
                else:
                    out[name].append(line.strip())
        return {k: "".join(v) for k, v in out.items()}

    def span(coords: str) -> tuple[str, int, int]:
        chrom, rng = coords.rsplit(":", 1)
        a, b = rng.split("-")
        return chrom, int(a), int(b)

    species = REPO_ROOT / "data" / "species"
    corpus, ranges = {}, {}
    for header, seq in records(species / "pretrain" / "genomes.fa.gz").items():
        label, coords = header.split()
        corpus[label], ranges[label] = seq, span(coords)
        assert len(seq) == ranges[label][2] - ranges[label][1], header
    bed = [line.split("\t") for line in (species / "pretrain" / "genomes.bed").read_text().splitlines()]
    assert {row[0]: int(row[2]) for row in bed} == {k: len(v) for k, v in corpus.items()}
    for split in ("train", "valid", "test"):
        verbatim = 0
        for name, seq in records(species / f"{split}.fa.gz").items():
            coords, label = name.rsplit("|", 1)
            chrom, a, b = span(coords)
            r_chrom, r_a, r_b = ranges[label]
            inside = chrom == r_chrom and r_a <= a and b <= r_b
            assert inside == (split == "train"), f"{split} fragment {name} vs corpus range {ranges[label]}"
            verbatim += seq in corpus[label]
        # outside the train range, only repeats (rRNA operons, IS elements) recur verbatim
        assert verbatim == {"train": 2000, "valid": 3, "test": 12}[split], (split, verbatim)
    overrides = list(finetune_cfg().pretrain_overrides)
    with initialize_config_dir(config_dir=TRAIN_CONFIGS, version_base="1.3"):
        data = compose(config_name="train", overrides=overrides).data
    assert [g.fasta for g in data.genomes if g.weight > 0] == ["data/species/pretrain/genomes.fa.gz"]


@pytest.mark.parametrize("method", ["soft_prompt_token", "linear_probe"])
def test_smoke_finetune_from_smoke_pretraining(tmp_path: Path, smoke_checkpoint: str, task_dir: Path,
                                               method: str) -> None:
    out = tmp_path / "ft"
    cfg = finetune_cfg(f"pretrained={smoke_checkpoint}", f"method={method}", "task=table", f"task.data={task_dir}",
                       "task.sequence_column=seq", "task.label_columns=y", "task.batch_size=8",
                       "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=csv",
                       "icl_shots=[0]", f"output_dir={out}", "torch_threads=1", "baseline.kmer_sizes=[2,3]")
    result = fit(cfg)
    saved = json.loads((out / "results.json").read_text())
    # the k-mer floor, fitted on the same examples: GC content separates the toy classes
    assert saved["kmer_baseline_acc"] == result["kmer_baseline_acc"] >= 0.75 and saved["kmer_sizes"] == [2, 3]
    assert (out / "loss_curves.png").is_file() and saved["plot"] == str(out / "loss_curves.png")
    assert saved["test"] == result["test"]
    assert set(result["test"]) >= {"acc", "mcc", "f1", "auroc", "loss"}
    assert 0.0 <= result["test"]["acc"] <= 1.0
    assert Path(result["best_checkpoint"]).is_file()
    assert result["label_names"] == ["0", "1"] and result["max_length"] == 60 + (method == "soft_prompt_token")
    assert result["icl"][0]["shots"] == 0.0 and result["icl"][0]["n"] == 8


def test_bad_setups_fail_before_training(tmp_path: Path, smoke_checkpoint: str, task_dir: Path) -> None:
    base = [f"pretrained={smoke_checkpoint}", "task=table", f"task.data={task_dir}", "task.sequence_column=seq",
            "task.label_columns=y", f"output_dir={tmp_path}", "logger=none"]
    with pytest.raises(ValueError, match=r"n_soft_tokens=128 prompt tokens do not fit beside the task: its length "
                                         r"is 100 tokens \(task.max_length\) and the model's l_max=130 leaves room "
                                         r"for at most 30 prompt tokens"):
        fit(finetune_cfg(*base, "method=soft_prompt", "method.n_soft_tokens=128", "task.max_length=100"))
    with pytest.raises(ValueError, match=r"n_soft_tokens=100 prompt tokens do not fit beside the task: its length "
                                         r"is 60 tokens \(longest sequence\) and the model's l_max=130 leaves room "
                                         r"for at most 70 prompt tokens; .*task.max_length<=30"):
        fit(finetune_cfg(*base, "method=soft_prompt", "method.n_soft_tokens=100"))
    with pytest.raises(ValueError, match="n_soft_tokens=200 leaves no room in the model's l_max=130"):
        fit(finetune_cfg(*base, "method=soft_prompt", "method.n_soft_tokens=200"))
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] not found"):
        fit(finetune_cfg(*base, "task.label_columns=label"))
    with pytest.raises(ValueError, match="1-shot prompt of 2 classes x 60 bases is 187 tokens"):
        fit(finetune_cfg(*base, "icl_shots=[1]"))
    with pytest.raises(FileNotFoundError, match="pretrained=.*missing.ckpt: checkpoint not found"):
        fit(finetune_cfg(*base, f"pretrained={tmp_path / 'missing.ckpt'}"))
    with pytest.raises(ValueError, match="unknown top-level config key"):
        fit(finetune_cfg(*base, "+lr=3"))


@pytest.mark.parametrize("own_bar", [None, "true"])
def test_quick_pretraining_keeps_the_finetuning_runs_settings(tmp_path: Path, monkeypatch, own_bar: str | None) -> None:
    """Without pretrained=, the quick pretraining composes train.yaml with the finetuning run's
    process-wide switches and progress-bar choice (start_run applies them again), unless
    pretrain_overrides says otherwise."""
    import hyenadna.pretrain
    from hyenadna.finetune import load_language_model

    seen: dict[str, DictConfig] = {}

    def no_training(cfg: DictConfig) -> dict[str, str]:
        seen["cfg"] = cfg
        return {"last_checkpoint": ""}

    monkeypatch.setattr(hyenadna.pretrain, "fit", no_training)
    own = [] if own_bar is None else [f"++trainer.enable_progress_bar={own_bar}"]
    cfg = finetune_cfg("pretrained=null", "cpu_reuse_buffers=false", "trainer.enable_progress_bar=false",
                       "torch_threads=1", f"pretrain_overrides=[{','.join(repr(o) for o in ['logger=none', *own])}]")
    with pytest.raises(RuntimeError, match="wrote no checkpoint"):
        load_language_model(cfg, tmp_path)
    pre = seen["cfg"]
    assert pre.cpu_reuse_buffers is False and pre.torch_threads == 1
    assert pre.cpu_huge_pages is True and pre.cpu_keep_freed_memory is False
    assert pre.trainer.enable_progress_bar is (own_bar == "true")
    assert pre.output_dir == str(tmp_path / "pretrain")


class RecordingWandb(pl.loggers.Logger):
    """Stands in for lightning's WandbLogger (same config keys): records what the run logs to it."""

    def __init__(self, project: str, name: str, save_dir: str, offline: bool = False) -> None:
        super().__init__()
        self.settings = {"project": project, "name": name, "save_dir": save_dir, "offline": offline}
        self.configs: list[dict] = []
        self.rows: list[dict] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # type: ignore[no-untyped-def, override]
        self.configs.append(dict(params))

    def log_metrics(self, metrics, step=None) -> None:  # type: ignore[no-untyped-def, override]
        self.rows.append(dict(metrics))


def test_train_and_finetune_log_alike_to_wandb_and_csv(tmp_path: Path, task_dir: Path, monkeypatch) -> None:
    """logger=wandb: both runs give the wandb logger (built by run.build_loggers, offline without an
    API key) the resolved config and their metrics, and write the resolved config.yaml and
    metrics.csv into the output folder, as the README says."""
    import lightning.pytorch.loggers

    monkeypatch.setattr(lightning.pytorch.loggers, "WandbLogger", RecordingWandb)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    made: list[RecordingWandb] = []
    original_init = RecordingWandb.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(RecordingWandb, "__init__", init)
    pre_out, ft_out = tmp_path / "pre", tmp_path / "ft"
    with initialize_config_dir(config_dir=TRAIN_CONFIGS, version_base="1.3"):
        pre_cfg = compose(config_name="train", overrides=["experiment=smoke", f"output_dir={pre_out}", "logger=wandb",
                                                          "baseline.markov_orders=[]"])
    pre = pretrain_fit(pre_cfg)
    ft = fit(finetune_cfg(f"pretrained={pre['last_checkpoint']}", "method=linear_probe", "task=table",
                          f"task.data={task_dir}", "task.sequence_column=seq", "task.label_columns=y",
                          "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=wandb",
                          f"output_dir={ft_out}", "torch_threads=1", "method.lr=0.003"))
    assert len(made) == 2
    for run, out, result, metric in ((made[0], pre_out, pre, "val/ppl"), (made[1], ft_out, ft, "val/acc")):
        assert run.settings["offline"] is True and run.settings["save_dir"] == str(out)
        text = (out / "config.yaml").read_text()
        assert "${" not in text  # resolved
        config = next(c for c in run.configs if "output_dir" in c)
        assert config == OmegaConf.to_container(OmegaConf.load(out / "config.yaml"))
        assert config["output_dir"] == str(out) and config["logger"]["wandb"]["save_dir"] == str(out)
        assert any(metric in row for row in run.rows)
        assert result["metrics_csv"] == str(out / "metrics.csv")
        with open(out / "metrics.csv") as f:
            assert metric in f.readline().strip().split(",")
    assert made[1].configs[-1]["optimizer"]["lr"] == 0.003  # ${method.lr}, resolved
