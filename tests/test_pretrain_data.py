"""Pretraining windows and the PretrainDataModule: shapes, shift, splits, RC, N policy,
padding, determinism, stages, resume, multi-genome sampling and bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hyenadna.genome import Interval
from hyenadna.pretrain_data import (
    IGNORE_INDEX,
    EpochSampler,
    PretrainDataModule,
    shift_window,
    tile_intervals,
    window_is_usable,
)
from hyenadna.tokenizer import CharTokenizer

DATA = Path(__file__).resolve().parent.parent / "data"
TOK = CharTokenizer()
PAD = CharTokenizer.PAD_ID


def random_dna(seed: int, n: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            f.writelines(seq[i : i + 70] + "\n" for i in range(0, len(seq), 70))
    return path


@pytest.fixture
def genome_a(tmp_path: Path) -> dict[str, object]:
    """chr1 (6000 bp), chrS (300 bp, shorter than a window); BED with all three splits."""
    records = {"chr1": random_dna(1, 6000), "chrS": random_dna(2, 300)}
    fasta = write_fasta(tmp_path / "a.fa", records)
    bed = tmp_path / "a.bed"
    bed.write_text(
        "chr1\t0\t4000\ttrain\nchrS\t0\t300\ttrain\nchr1\t4000\t5000\tvalid\nchr1\t5000\t6000\ttest\n"
    )
    return {"name": "a", "fasta": str(fasta), "bed": str(bed), "records": records}


def source(g: dict[str, object], **extra: object) -> dict[str, object]:
    return {k: v for k, v in g.items() if k != "records"} | extra


def make_dm(*genomes: dict[str, object], **kwargs: object) -> PretrainDataModule:
    defaults: dict[str, object] = dict(max_length=512, batch_size=4, train_samples_per_epoch=64)
    dm = PretrainDataModule([source(g) if "records" in g else g for g in genomes], **(defaults | kwargs))
    dm.setup("fit")
    return dm


def full_tokens(item: dict[str, torch.Tensor]) -> np.ndarray:
    """The L + 1 real tokens a window was built from (input_ids plus the last real target)."""
    n_real = int((item["targets"] != IGNORE_INDEX).sum()) + 1
    return np.concatenate([item["input_ids"].numpy()[: n_real - 1], item["targets"].numpy()[n_real - 2 : n_real - 1]])


# ----------------------------------------------------------------- windows


def test_shift_and_padding_rules() -> None:
    ids = TOK.encode("ACGTNACG")
    full = shift_window(ids, 7)
    assert full["input_ids"].tolist() == ids[:-1].tolist()
    assert full["targets"].tolist() == ids[1:].tolist()
    short = shift_window(ids[:5], 7)  # 5 real bases in a window of 7
    assert short["input_ids"].tolist() == ids[:5].tolist() + [PAD, PAD]
    assert short["targets"].tolist() == ids[1:5].tolist() + [IGNORE_INDEX] * 3
    with pytest.raises(ValueError, match="needs 1..8 tokens"):
        shift_window(TOK.encode("A" * 9), 7)


def test_train_windows_have_length_shift_and_come_from_train_intervals(genome_a: dict) -> None:
    dm = make_dm(genome_a, rc_aug=False)
    records = genome_a["records"]
    train = dm._train_dataset(512)
    seen_chroms = set()
    for index in range(64):
        item = train[(0, index)]
        assert item["input_ids"].shape == (512,) and item["targets"].shape == (512,)
        assert item["input_ids"].dtype == torch.int64
        window, flip = train.window(0, index)
        assert not flip
        seen_chroms.add(window.chrom)
        # Inside a train interval, never in chr1's held-out range [4000, 6000).
        limit = 4000 if window.chrom == "chr1" else 300
        assert 0 <= window.start < window.end <= limit
        assert TOK.decode(full_tokens(item)) == records[window.chrom][window.start : window.end]
        real = item["targets"] != IGNORE_INDEX
        assert torch.equal(item["input_ids"][1:][real[:-1]], item["targets"][:-1][real[:-1]])
    assert seen_chroms == {"chr1", "chrS"}


def test_short_interval_is_padded_and_masked(tmp_path: Path) -> None:
    seq = random_dna(5, 300)
    fasta = write_fasta(tmp_path / "s.fa", {"c": seq})
    bed = tmp_path / "s.bed"
    bed.write_text("c\t0\t200\ttrain\nc\t200\t300\tvalid\n")
    dm = make_dm({"name": "s", "fasta": str(fasta), "bed": str(bed)}, rc_aug=False)
    item = dm._train_dataset(512)[(0, 0)]
    # 200 bases available: 199 targets, then padding to the end of the window.
    assert TOK.decode(item["input_ids"][:200]) == seq[:200]
    assert (item["input_ids"][200:] == PAD).all()
    assert (item["targets"][:199] != IGNORE_INDEX).all() and (item["targets"][199:] == IGNORE_INDEX).all()
    val = dm.val_dataset[0]  # the valid interval [200, 300) ends at the chromosome end
    assert TOK.decode(val["input_ids"][:100]) == seq[200:300]
    assert (val["input_ids"][100:] == PAD).all() and (val["targets"][99:] == IGNORE_INDEX).all()


def test_valid_and_test_tiles_do_not_overlap_and_cover_the_intervals(genome_a: dict) -> None:
    dm = make_dm(genome_a, val_max_length=300)
    for dataset, (lo, hi) in ((dm.val_dataset, (4000, 5000)), (dm.test_dataset, (5000, 6000))):
        cover = np.zeros(6000, dtype=int)
        for w in dataset.windows:
            assert w.end - w.start <= 301
            cover[w.start : w.end] += 1
        assert (cover[lo:hi] == 1).all() and cover.sum() == hi - lo
        first = dataset[0]
        assert first["input_ids"].shape == (300,)
        assert TOK.decode(full_tokens(first)) == genome_a["records"]["chr1"][lo : lo + 301]
    # Tiles are fixed: a second data module gives the same ones.
    assert make_dm(genome_a, val_max_length=300).val_dataset.windows == dm.val_dataset.windows


def test_max_val_windows_thins_evenly(genome_a: dict) -> None:
    all_tiles = make_dm(genome_a, val_max_length=50).val_dataset.windows  # 1000 / 51 -> 20 tiles
    thinned = make_dm(genome_a, val_max_length=50, max_val_windows=3).val_dataset.windows
    assert len(all_tiles) == 20 and thinned == [all_tiles[0], all_tiles[10], all_tiles[19]]


def test_tile_intervals_skips_one_base_tail() -> None:
    tiles = tile_intervals([Interval("c", 0, 11, "valid")], genome=0, length=4)
    assert [(w.start, w.end) for w in tiles] == [(0, 5), (5, 10)]  # [10, 11) has no target


# --------------------------------------------------------------------- RC


def test_rc_augmentation_flips_before_the_shift(genome_a: dict) -> None:
    plain = make_dm(genome_a, rc_aug=False)._train_dataset(256)
    aug = make_dm(genome_a, rc_aug=True)._train_dataset(256)
    flips = 0
    for index in range(64):
        window, flip = aug.window(0, index)
        assert plain.window(0, index)[0] == window  # same window, only the strand differs
        a, b = full_tokens(aug[(0, index)]), full_tokens(plain[(0, index)])
        if flip:
            flips += 1
            assert np.array_equal(a, TOK.reverse_complement(b))
            # Targets are the next base of the flipped strand.
            assert np.array_equal(aug[(0, index)]["targets"].numpy()[: a.size - 1], a[1:])
        else:
            assert np.array_equal(a, b)
    assert 16 < flips < 48  # p = 0.5 over 64 draws


def test_reverse_complement_is_an_involution_and_a_bijection_on_windows() -> None:
    rng = np.random.default_rng(0)
    windows = {random_dna(int(s), 33) for s in rng.integers(0, 10**6, size=300)}
    images = set()
    for w in windows:
        ids = TOK.encode(w)
        rc = TOK.reverse_complement(ids)
        assert np.array_equal(TOK.reverse_complement(rc), ids)
        images.add(TOK.decode(rc))
    assert len(images) == len(windows)


# ---------------------------------------------------------------- N policy


@pytest.fixture
def genome_with_n(tmp_path: Path) -> dict[str, object]:
    seq = random_dna(7, 3000)
    seq = seq[:1000] + "N" * 600 + seq[1600:2400] + "N" * 50 + seq[2450:]
    fasta = write_fasta(tmp_path / "n.fa", {"c": seq})
    bed = tmp_path / "n.bed"
    bed.write_text("c\t0\t2000\ttrain\nc\t2000\t3000\tvalid\n")
    return {"name": "n", "fasta": str(fasta), "bed": str(bed), "records": {"c": seq}}


def test_n_kept_by_default_but_all_n_windows_never_used(genome_with_n: dict) -> None:
    dm = make_dm(genome_with_n, max_length=100, val_max_length=100, train_samples_per_epoch=400)
    train = dm._train_dataset(100)
    items = [train[(0, i)] for i in range(400)]
    n_counts = [int((it["input_ids"] == CharTokenizer.N_ID).sum()) for it in items]
    assert max(n_counts) > 0  # N kept as token 11
    assert all(c < 100 for c in n_counts)  # a window of only N is redrawn
    assert len(dm.val_dataset) == 10  # tiles [2303, 2404) and [2404, 2505) hold N and are kept


def test_max_n_fraction_drops_and_redraws(genome_with_n: dict) -> None:
    dm = make_dm(genome_with_n, max_length=100, val_max_length=100, max_n_fraction=0.0)
    train = dm._train_dataset(100)
    for i in range(64):
        assert not (train[(0, i)]["input_ids"] == CharTokenizer.N_ID).any()
    assert len(dm.val_dataset) == 8  # the two tiles holding N at [2400, 2450) are dropped
    assert all(not (dm.val_dataset[i]["input_ids"] == CharTokenizer.N_ID).any() for i in range(8))
    assert window_is_usable(TOK.encode("ACGN"), 0.25) and not window_is_usable(TOK.encode("ACNN"), 0.25)


def test_all_n_train_intervals_are_a_clear_error(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "alln.fa", {"c": "N" * 2000 + random_dna(1, 500)})
    bed = tmp_path / "alln.bed"
    bed.write_text("c\t0\t2000\ttrain\nc\t2000\t2500\tvalid\n")
    with pytest.raises(ValueError, match="genome 'x' .*alln.fa.*train intervals are all N"):
        make_dm({"name": "x", "fasta": str(fasta), "bed": str(bed)})


def test_all_n_valid_is_a_clear_error(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "v.fa", {"c": random_dna(1, 2000) + "N" * 500})
    bed = tmp_path / "v.bed"
    bed.write_text("c\t0\t2000\ttrain\nc\t2000\t2500\tvalid\n")
    with pytest.raises(ValueError, match="no validation window.*'v'"):
        make_dm({"name": "v", "fasta": str(fasta), "bed": str(bed)})


def test_lowercase_follows_tokenizer_policy(tmp_path: Path) -> None:
    seq = random_dna(3, 2000).lower()
    fasta = write_fasta(tmp_path / "low.fa", {"c": seq})
    g = {"name": "low", "fasta": str(fasta)}
    item = make_dm(g, max_length=64, rc_aug=False).val_dataset[0]
    assert (item["input_ids"] >= CharTokenizer.A_ID).all()  # read as bases
    unk = make_dm(g, max_length=64, lowercase="unk").val_dataset[0]
    assert (unk["input_ids"] == CharTokenizer.UNK_ID).all()
    with pytest.raises(ValueError, match="low.fa, c:.*lowercase"):
        make_dm(g, max_length=64, lowercase="error")


# ------------------------------------------------------------ determinism


def batches(loader: torch.utils.data.DataLoader, n: int) -> list[torch.Tensor]:
    out = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        out.append(batch["input_ids"])
    return out


def test_train_windows_do_not_depend_on_workers_or_instance(genome_a: dict) -> None:
    single = batches(make_dm(genome_a, num_workers=0).train_dataloader(), 8)
    multi = batches(make_dm(genome_a, num_workers=2).train_dataloader(), 8)
    again = batches(make_dm(genome_a, num_workers=0).train_dataloader(), 8)
    for a, b, c in zip(single, multi, again):
        assert torch.equal(a, b) and torch.equal(a, c)
    other_seed = batches(make_dm(genome_a, seed=1).train_dataloader(), 1)
    assert not torch.equal(single[0], other_seed[0])


def test_each_epoch_draws_new_windows(genome_a: dict) -> None:
    loader = make_dm(genome_a).train_dataloader()
    first = batches(loader, 2)
    loader.sampler.set_epoch(1)
    second = batches(loader, 2)
    loader.sampler.set_epoch(0)
    assert not torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first, batches(loader, 2)))


def test_set_stage_changes_next_train_loader_only(genome_a: dict) -> None:
    dm = make_dm(genome_a, max_length=512, batch_size=4)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (4, 512)
    dm.set_stage(64, 32)
    assert dm.tokens_per_batch == 64 * 32
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (32, 64)
    val = dm.val_dataloader()
    assert val.batch_size == 4 and next(iter(val))["input_ids"].shape[1] == 512
    with pytest.raises(ValueError, match="seq_len 1024 is above .* max_length 512"):
        dm.set_stage(1024, 2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        dm.set_stage(64, 0)


def test_state_dict_round_trip_resumes_mid_epoch(genome_a: dict) -> None:
    dm = make_dm(genome_a, batch_size=4, train_samples_per_epoch=64)
    dm.set_stage(128, 4)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    epoch2 = batches(loader, 16)
    # A trainer in epoch 2 that has run 5 batches, as Lightning reports it.
    progress = SimpleNamespace(current=SimpleNamespace(processed=5))
    dm.trainer = SimpleNamespace(current_epoch=2, global_rank=0, world_size=1,
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    state = dm.state_dict()
    assert state == {"seq_len": 128, "batch_size": 4, "epoch": 2, "samples_done": 20, "seed": 0}

    resumed = make_dm(genome_a, batch_size=4, train_samples_per_epoch=64)
    resumed.load_state_dict(state)
    assert (resumed.seq_len, resumed.train_batch_size) == (128, 4)
    loader = resumed.train_dataloader()
    assert len(loader) == 16  # full epoch length, so Lightning's counter ends it right
    rest = batches(loader, 16)
    assert len(rest) == 11 and all(torch.equal(a, b) for a, b in zip(rest, epoch2[5:]))
    loader.sampler.set_epoch(3)  # the next epoch starts from its beginning
    assert len(batches(loader, 16)) == 16
    with pytest.raises(ValueError, match="seed 1 differs"):
        make_dm(genome_a).load_state_dict(state | {"seed": 1})


def test_ddp_ranks_get_disjoint_shards() -> None:
    ranks = [list(EpochSampler(10, epoch=3, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == [(3, 0), (3, 2), (3, 4), (3, 6), (3, 8)]
    assert ranks[1] == [(3, 1), (3, 3), (3, 5), (3, 7), (3, 9)]


# ------------------------------------------------------------ multi-genome


@pytest.fixture
def genome_b(tmp_path: Path) -> dict[str, object]:
    fasta = write_fasta(tmp_path / "b.fa", {"bchr": random_dna(9, 3000)})
    return {"name": "b", "fasta": str(fasta)}


def test_genome_weights(genome_a: dict, genome_b: dict) -> None:
    only_a = make_dm(genome_a, genome_b | {"weight": 0.0}, train_samples_per_epoch=200)._train_dataset(64)
    assert {only_a.window(0, i)[0].genome for i in range(200)} == {0}
    both = make_dm(genome_a, genome_b | {"weight": 1.0}, train_samples_per_epoch=200)._train_dataset(64)
    share_b = np.mean([both.window(0, i)[0].genome == 1 for i in range(200)])
    assert 0.35 < share_b < 0.65
    # Genome b has no BED: its chromosome is split by coordinates, so it also has valid windows.
    dm = make_dm(genome_a, genome_b, val_fraction=0.1, test_fraction=0.1, val_max_length=100)
    assert {w.genome for w in dm.val_dataset.windows} == {0, 1}
    assert all(w.start >= 2400 for w in dm.val_dataset.windows if w.genome == 1)


# --------------------------------------------------------------- bad input


def test_bad_inputs_name_the_file(tmp_path: Path, genome_a: dict) -> None:
    with pytest.raises(FileNotFoundError, match="genome 'x': FASTA file not found: .*missing.fa"):
        make_dm({"name": "x", "fasta": str(tmp_path / "missing.fa")})
    bed = tmp_path / "wrong.bed"
    bed.write_text("chr1\t0\t100\ttrain\nchr9\t0\t100\tvalid\n")
    with pytest.raises(ValueError, match=r"wrong.bed:2 .*'chr9' is not in FASTA .*a.fa \(genome 'a'\)"):
        make_dm(source(genome_a, bed=str(bed)))
    bed.write_text("chr1\t0\t100\ttrain\nchr1\t5000\t6001\tvalid\n")
    with pytest.raises(ValueError, match=r"wrong.bed:2 .*past the end of chr1 \(length 6000\)"):
        make_dm(source(genome_a, bed=str(bed)))
    bad_fasta = tmp_path / "bad.fa"
    bad_fasta.write_text("ACGT\n>a\nACGT\n")
    with pytest.raises(ValueError, match="genome 'bad': .*bad.fa is not a valid FASTA"):
        make_dm({"name": "bad", "fasta": str(bad_fasta)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 0}, "max_length must be an integer >= 1"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1"),
        ({"max_n_fraction": 1.5}, "max_n_fraction must be in"),
        ({"num_workers": -1}, "num_workers must be"),
        ({"genomes": []}, "non-empty list"),
        ({"genomes": [{"name": "a", "fasta": "x.fa", "wieght": 1}]}, r"unknown genome source key\(s\) \['wieght'\]"),
        ({"genomes": [{"name": "a", "fasta": "x.fa", "weight": 0}]}, "at least one genome needs"),
        ({"genomes": [{"name": "a", "fasta": "x.fa", "weight": -1}]}, "weight must be a finite number"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    args = {"genomes": [{"name": "a", "fasta": "x.fa"}], "max_length": 16, "batch_size": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        PretrainDataModule(**args)


def test_loaders_before_setup_are_an_error(genome_a: dict) -> None:
    dm = PretrainDataModule([source(genome_a)], max_length=16, batch_size=2)
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


# ------------------------------------------------------------ shipped data


def test_shipped_human_data_default_split() -> None:
    dm = make_dm({"name": "human", "fasta": str(DATA / "human_chrX_8mb.fa.gz"),
                  "bed": str(DATA / "human_chrX_small.bed")}, max_length=1024, batch_size=8)
    assert len(dm.val_dataset) == 196 and len(dm.test_dataset) == 196  # 200 kb / 1025, last padded
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 1024)
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    # Real DNA: all four bases, no padding needed inside the 2 Mb train range.
    assert set(batch["input_ids"].unique().tolist()) == {7, 8, 9, 10}


def test_lightning_resume_mid_epoch_and_at_epoch_end_sees_the_same_batches(tmp_path: Path) -> None:
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    seen: list[tuple[int, int, int]] = []

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(16, 1)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            seen.append((self.current_epoch, batch_idx, hash(batch["input_ids"].numpy().tobytes())))
            return self.emb(batch["input_ids"]).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def data() -> PretrainDataModule:
        return PretrainDataModule(
            [{"name": "h", "fasta": str(DATA / "human_chrX_8mb.fa.gz"), "bed": str(DATA / "human_chrX_small.bed")}],
            max_length=32, batch_size=4, train_samples_per_epoch=40,
        )

    def fit(ckpt_path: str | None = None, callbacks: list | None = None) -> None:
        trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, callbacks=callbacks or [], enable_checkpointing=bool(callbacks),
                             default_root_dir=tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Recorder(), datamodule=data(), ckpt_path=ckpt_path)

    fit(callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, filename="{step}")])
    full = list(seen)
    assert len(full) == 30 and len({h for _, _, h in full}) == 30  # 3 epochs of 10 distinct batches
    for step in (15, 10):  # mid-epoch 1, and the last batch of epoch 0
        seen.clear()
        fit(ckpt_path=str(tmp_path / f"step={step}.ckpt"))
        assert seen == full[step:]
