"""Pretraining data: next-base windows cut from genomes, and the LightningDataModule owning them.

A window of length ``L`` is read as ``L + 1`` consecutive bases ``b``; the item is

    input_ids = b[:-1]      targets = b[1:]        (LongTensor of length L each)

with no CLS/SEP (pretraining inputs are bare bases, as in the official hg38 dataset).
Rules, each chosen so that held-out perplexities mean what they say:

* Windows never leave their interval, so a train window never reads a held-out base. Where a
  window is cut short (an interval shorter than ``L + 1``, which is also how chromosome ends
  show up) the missing positions are ``[PAD]`` in ``input_ids`` and ``-100`` (ignored by the
  loss) in ``targets``; padding is always on the right.
* Train windows start at a uniformly random offset inside an interval drawn with probability
  proportional to its length, after drawing the genome by its sampling weight. Every draw
  comes from ``numpy.random.default_rng((seed, epoch, index))``, so the windows of an epoch
  do not depend on the number of workers and a resumed run sees the same windows.
* Valid/test windows tile each interval without overlap, from its start, at stride ``L + 1``
  (the last, shorter tile is kept and padded); they are fixed for the whole run.
* Reverse-complement augmentation (train only, probability 0.5) flips the ``L + 1`` bases
  before the shift, so the targets are still the next base of the (flipped) strand.
* N policy: N stays token 11. A window made only of N is never used; ``max_n_fraction`` (default
  1.0) also rejects windows with a larger fraction of N. Rejected train windows are redrawn,
  rejected valid/test windows dropped. Train intervals with no usable window raise an error.
* Lowercase (soft-masked) bases follow the tokenizer's ``lowercase`` policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hyenadna.genome import (
    SPLITS,
    Genome,
    Interval,
    check_intervals,
    merge_intervals,
    read_bed,
    split_by_coordinates,
)
from hyenadna.tokenizer import CharTokenizer

IGNORE_INDEX = -100
RC_PROBABILITY = 0.5
# Draws per train item before giving up; only reached if almost every window is rejected.
_MAX_DRAWS = 1000
# Windows probed per genome at setup to prove that its train intervals are usable.
_PROBE_DRAWS = 256
# Seed-stream id of the setup probe: no epoch uses it, so probing never shifts train draws.
_PROBE_STREAM = 2**32 - 1


@dataclass(frozen=True)
class GenomeSource:
    """One genome to pretrain on: a FASTA, an optional BED split and a sampling weight."""

    name: str
    fasta: str
    bed: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a genome source needs a non-empty name")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(
                f"genome {self.name!r}: weight must be a finite number >= 0, got {self.weight}"
            )

    @classmethod
    def from_any(cls, obj: GenomeSource | Mapping[str, Any]) -> GenomeSource:
        """Build from a GenomeSource or a mapping (a dict or a Hydra DictConfig)."""
        if isinstance(obj, GenomeSource):
            return obj
        if not isinstance(obj, Mapping):
            raise TypeError(f"a genome source must be a mapping, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(
                f"unknown genome source key(s) {unknown}; allowed keys are {sorted(known)}"
            )
        missing = sorted({"name", "fasta"} - set(obj))
        if missing:
            raise ValueError(f"genome source {dict(obj)} lacks required key(s) {missing}")
        bed = obj.get("bed")
        return cls(
            name=str(obj["name"]),
            fasta=str(obj["fasta"]),
            bed=None if bed is None else str(bed),
            weight=float(obj.get("weight", 1.0)),
        )


@dataclass(frozen=True)
class Window:
    """Bases [start, end) of ``chrom`` in genome number ``genome``; end - start <= L + 1."""

    genome: int
    chrom: str
    start: int
    end: int


def encode_window(genomes: Sequence[Genome], tokenizer: CharTokenizer, w: Window) -> np.ndarray:
    """Token ids of the bases of ``w``; a bad character names the FASTA and the coordinates."""
    bases = genomes[w.genome].fetch(w.chrom, w.start, w.end)
    try:
        return tokenizer.encode(bases)
    except ValueError as err:
        raise ValueError(f"FASTA {genomes[w.genome].path}, {w.chrom}:{w.start}-{w.end}: {err}") from None


def window_is_usable(ids: np.ndarray, max_n_fraction: float) -> bool:
    """False for a window made only of N, or with more than ``max_n_fraction`` N."""
    n_count = int(np.count_nonzero(ids == CharTokenizer.N_ID))
    return n_count < ids.size and n_count <= max_n_fraction * ids.size


def tile_intervals(intervals: Sequence[Interval], genome: int, length: int) -> list[Window]:
    """Non-overlapping windows of ``length + 1`` bases covering each interval from its start.

    The last tile of an interval may be shorter (it is padded); a tile of one base has no
    target and is skipped.
    """
    windows: list[Window] = []
    span = length + 1
    for iv in intervals:
        for start in range(iv.start, iv.end, span):
            end = min(start + span, iv.end)
            if end - start >= 2:
                windows.append(Window(genome, iv.chrom, start, end))
    return windows


class _IntervalTable:
    """The train intervals of one genome as arrays, for length-proportional sampling."""

    def __init__(self, intervals: Sequence[Interval]) -> None:
        self.chroms = [iv.chrom for iv in intervals]
        self.starts = np.array([iv.start for iv in intervals], dtype=np.int64)
        self.lengths = np.array([len(iv) for iv in intervals], dtype=np.int64)
        self.cumulative = np.cumsum(self.lengths)
        self.total = int(self.cumulative[-1]) if len(intervals) else 0

    def draw(self, rng: np.random.Generator, span: int) -> tuple[str, int, int]:
        """A random window of at most ``span`` bases: (chrom, start, end)."""
        k = int(np.searchsorted(self.cumulative, rng.integers(self.total), side="right"))
        length = int(self.lengths[k])
        take = min(span, length)
        start = int(self.starts[k]) + int(rng.integers(length - take + 1))
        return self.chroms[k], start, start + take


class TrainWindowDataset(Dataset):
    """Random train windows; item ``(epoch, index)`` is a pure function of (seed, epoch, index)."""

    def __init__(
        self,
        genomes: Sequence[Genome],
        intervals: Sequence[Sequence[Interval]],
        weights: Sequence[float],
        length: int,
        num_samples: int,
        tokenizer: CharTokenizer,
        seed: int = 0,
        rc_aug: bool = True,
        max_n_fraction: float = 1.0,
    ) -> None:
        if len(genomes) != len(intervals) or len(genomes) != len(weights):
            raise ValueError("genomes, intervals and weights must have one entry per genome")
        w = np.asarray(weights, dtype=np.float64)
        tables = [_IntervalTable(ivs) for ivs in intervals]
        # A genome with no train bases cannot be sampled whatever its weight.
        w = np.where([t.total > 0 for t in tables], w, 0.0)
        if not w.sum() > 0:
            raise ValueError("no genome has both a sampling weight > 0 and train intervals")
        self.genomes = list(genomes)
        self.tables = tables
        self.probabilities = w / w.sum()
        self.length = length
        self.num_samples = num_samples
        self.tokenizer = tokenizer
        self.seed = seed
        self.rc_aug = rc_aug
        self.max_n_fraction = max_n_fraction

    def __len__(self) -> int:
        return self.num_samples

    def draw(
        self, rng: np.random.Generator, genome: int | None = None
    ) -> tuple[Window, bool, np.ndarray]:
        """One candidate window, its strand flip and its (unflipped) ids."""
        if genome is None:
            genome = int(rng.choice(len(self.genomes), p=self.probabilities))
        chrom, start, end = self.tables[genome].draw(rng, self.length + 1)
        flip = bool(rng.random() < RC_PROBABILITY) and self.rc_aug
        window = Window(genome, chrom, start, end)
        return window, flip, self._encode(window)

    def _encode(self, w: Window) -> np.ndarray:
        return encode_window(self.genomes, self.tokenizer, w)

    def window(self, epoch: int, index: int) -> tuple[Window, bool]:
        """The window and strand flip of item ``index`` in ``epoch`` (no tensors built)."""
        window, flip, _ = self._accepted(epoch, index)
        return window, flip

    def _accepted(self, epoch: int, index: int) -> tuple[Window, bool, np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch, index))
        for _ in range(_MAX_DRAWS):
            window, flip, ids = self.draw(rng)
            if window_is_usable(ids, self.max_n_fraction):
                return window, flip, ids
        raise RuntimeError(
            f"{_MAX_DRAWS} train windows in a row were all N or had more than "
            f"max_n_fraction={self.max_n_fraction} N; raise max_n_fraction or fix the intervals"
        )

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        _, flip, ids = self._accepted(epoch, index)
        if flip:
            ids = self.tokenizer.reverse_complement(ids)
        return shift_window(ids, self.length)


def shift_window(ids: np.ndarray, length: int) -> dict[str, torch.Tensor]:
    """Shift ``ids`` (1 to length + 1 tokens) into right-padded input_ids/targets of ``length``."""
    n = ids.size
    if not 1 <= n <= length + 1:
        raise ValueError(f"a window of length {length} needs 1..{length + 1} tokens, got {n}")
    input_ids = np.full(length, CharTokenizer.PAD_ID, dtype=np.int64)
    targets = np.full(length, IGNORE_INDEX, dtype=np.int64)
    input_ids[: min(n, length)] = ids[:length]
    targets[: n - 1] = ids[1:]
    return {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets)}


class FixedWindowDataset(Dataset):
    """A fixed list of windows (valid/test), read in order, never augmented."""

    def __init__(
        self,
        genomes: Sequence[Genome],
        windows: Sequence[Window],
        length: int,
        tokenizer: CharTokenizer,
    ) -> None:
        self.genomes = list(genomes)
        self.windows = list(windows)
        self.length = length
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.windows)

    def encode(self, index: int) -> np.ndarray:
        """Token ids of the bases of window ``index``."""
        w = self.windows[index]
        return encode_window(self.genomes, self.tokenizer, w)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return shift_window(self.encode(index), self.length)


class EpochSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys, so workers need no epoch state of their own.

    Lightning calls ``set_epoch`` at the start of each epoch. In DDP each rank takes every
    ``world_size``-th index; subclassing DistributedSampler tells Lightning that the
    sharding is done here (it would otherwise wrap this sampler in its own). ``skip``
    resumes an epoch part-way: ``{epoch: n}`` starts that epoch at this rank's n-th item.
    ``len`` stays the full epoch so that Lightning's restored batch counter ends the
    resumed epoch at the right batch.
    """

    def __init__(
        self,
        total: int,
        epoch: int = 0,
        skip: Mapping[int, int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            range(total), num_replicas=world_size, rank=rank, shuffle=False, drop_last=True
        )
        self.epoch = epoch
        self.current_epoch = current_epoch
        self.skip = dict(skip or {})

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.current_epoch is not None:
            # Lightning's set_epoch passes its `processed` counter, which runs one ahead of
            # trainer.current_epoch after a resume from an epoch-end checkpoint.
            self.epoch = self.current_epoch()
        start = self.skip.pop(self.epoch, 0)
        epoch, rank, world = self.epoch, self.rank, self.num_replicas
        return ((epoch, p * world + rank) for p in range(start, self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class PretrainDataModule(pl.LightningDataModule):
    """Genomes, splits, tokenizer and loaders for next-base pretraining.

    ``genomes`` lists sources ``{name, fasta, bed (optional), weight (default 1)}``. Without a
    BED, each chromosome is cut into train | valid | test ranges by ``val_fraction`` and
    ``test_fraction``. Train windows have the current stage's length and batch size
    (``set_stage``, used by the sequence-length warmup); valid/test windows always have
    ``val_max_length``.
    """

    def __init__(
        self,
        genomes: Sequence[GenomeSource | Mapping[str, Any]],
        max_length: int,
        batch_size: int,
        val_max_length: int | None = None,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        rc_aug: bool = True,
        max_n_fraction: float = 1.0,
        train_samples_per_epoch: int = 10_000,
        max_val_windows: int | None = None,
        seed: int = 0,
        lowercase: str = "upper",
        cache_dir: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        if isinstance(genomes, (str, Mapping)) or len(genomes) == 0:
            raise ValueError("genomes must be a non-empty list of {name, fasta, bed, weight}")
        self.sources = [GenomeSource.from_any(g) for g in genomes]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"genome names must be unique, got {names}")
        if not sum(s.weight for s in self.sources) > 0:
            raise ValueError("at least one genome needs a sampling weight > 0")
        self.max_length = _positive_int("max_length", max_length)
        self.val_max_length = _positive_int(
            "val_max_length", max_length if val_max_length is None else val_max_length
        )
        self.batch_size = _positive_int("batch_size", batch_size)
        self.val_batch_size = _positive_int(
            "val_batch_size", batch_size if val_batch_size is None else val_batch_size
        )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if not 0.0 <= max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
        self.train_samples_per_epoch = _positive_int(
            "train_samples_per_epoch", train_samples_per_epoch
        )
        if max_val_windows is not None:
            max_val_windows = _positive_int("max_val_windows", max_val_windows)
        self.max_val_windows = max_val_windows
        self.num_workers = num_workers
        self.rc_aug = bool(rc_aug)
        self.max_n_fraction = float(max_n_fraction)
        self.seed = int(seed)
        self.tokenizer = CharTokenizer(lowercase=lowercase)
        self.cache_dir = cache_dir
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(
                "val_fraction and test_fraction must be in [0, 1), "
                f"got {val_fraction}, {test_fraction}"
            )
        # Current train stage (changed by the sequence-length warmup) and resume position.
        self.seq_len = self.max_length
        self.train_batch_size = self.batch_size
        self._epoch = 0
        self._skip: dict[int, int] = {}
        self._genomes: list[Genome] | None = None
        self.intervals: dict[str, list[list[Interval]]] = {}
        self.val_dataset: FixedWindowDataset | None = None
        self.test_dataset: FixedWindowDataset | None = None

    # -- stage -----------------------------------------------------------------

    def set_stage(self, seq_len: int, batch_size: int) -> None:
        """Set the train window length and batch size used by the next ``train_dataloader()``."""
        seq_len = _positive_int("seq_len", seq_len)
        if seq_len > self.max_length:
            raise ValueError(
                f"stage seq_len {seq_len} is above the data module's max_length {self.max_length}"
            )
        self.seq_len = seq_len
        self.train_batch_size = _positive_int("batch_size", batch_size)

    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one train batch of the current stage (padding included)."""
        return self.seq_len * self.train_batch_size

    # -- setup -----------------------------------------------------------------

    def prepare_data(self) -> None:
        """Open every FASTA once: converts plain gzip and writes indexes (rank 0 only in DDP)."""
        for source in self.sources:
            self._open_genome(source)

    def _open_genome(self, source: GenomeSource) -> Genome:
        try:
            return Genome(source.fasta, cache_dir=self.cache_dir)
        except (FileNotFoundError, ValueError, PermissionError) as err:
            raise type(err)(f"genome {source.name!r}: {err}") from None

    def setup(self, stage: str | None = None) -> None:
        """Open genomes, read and check splits, build valid/test windows; fails before training."""
        if self._genomes is not None:
            return
        genomes = [self._open_genome(s) for s in self.sources]
        per_split: dict[str, list[list[Interval]]] = {split: [] for split in SPLITS}
        for source, genome in zip(self.sources, genomes):
            if source.bed is not None:
                intervals = read_bed(source.bed)
                where = f"{source.fasta} (genome {source.name!r})"
                check_intervals(genome.chrom_lengths, intervals, fasta=where)
            else:
                intervals = split_by_coordinates(
                    genome.chrom_lengths, self.val_fraction, self.test_fraction
                )
            merged = merge_intervals(intervals)
            for split in SPLITS:
                per_split[split].append([iv for iv in merged if iv.split == split])
        self._genomes = genomes
        self.intervals = per_split
        train = self._train_dataset(self.seq_len)
        self._probe_train(train)
        self.val_dataset = self._fixed_dataset("valid")
        if len(self.val_dataset) == 0:
            raise ValueError(
                "no validation window: the genomes "
                f"{[s.name for s in self.sources]} have no usable 'valid' interval "
                "(add valid rows to the BED, or set val_fraction > 0)"
            )
        self.test_dataset = self._fixed_dataset("test")

    def _probe_train(self, train: TrainWindowDataset) -> None:
        """Raise if a sampled genome's train intervals yield no usable window."""
        for g, source in enumerate(self.sources):
            if train.probabilities[g] == 0:
                if source.weight > 0:
                    raise ValueError(
                        f"genome {source.name!r} ({source.fasta}) has weight {source.weight} "
                        "but no train interval"
                    )
                continue
            rng = np.random.default_rng((self.seed, _PROBE_STREAM, g))
            if not any(
                window_is_usable(train.draw(rng, genome=g)[2], self.max_n_fraction)
                for _ in range(_PROBE_DRAWS)
            ):
                limit = f" or above max_n_fraction={self.max_n_fraction}"
                raise ValueError(
                    f"genome {source.name!r} ({source.fasta}): none of {_PROBE_DRAWS} sampled "
                    "train windows is usable: the train intervals are all N"
                    + (limit if self.max_n_fraction < 1 else "")
                )

    def _require_setup(self) -> list[Genome]:
        if self._genomes is None:
            raise RuntimeError("call PretrainDataModule.setup() before asking for data")
        return self._genomes

    def _train_dataset(self, length: int) -> TrainWindowDataset:
        return TrainWindowDataset(
            self._require_setup(),
            self.intervals["train"],
            [s.weight for s in self.sources],
            length=length,
            num_samples=self.train_samples_per_epoch,
            tokenizer=self.tokenizer,
            seed=self.seed,
            rc_aug=self.rc_aug,
            max_n_fraction=self.max_n_fraction,
        )

    def _fixed_dataset(self, split: str) -> FixedWindowDataset:
        """All tiles of ``split`` (evenly thinned to ``max_val_windows``), N policy applied."""
        genomes = self._require_setup()
        windows = [
            w
            for g, intervals in enumerate(self.intervals[split])
            for w in tile_intervals(intervals, g, self.val_max_length)
        ]
        if self.max_val_windows is not None and len(windows) > self.max_val_windows:
            keep = np.unique(np.linspace(0, len(windows) - 1, self.max_val_windows).round())
            windows = [windows[int(i)] for i in keep]
        dataset = FixedWindowDataset(genomes, windows, self.val_max_length, self.tokenizer)
        dataset.windows = [
            w
            for i, w in enumerate(windows)
            if window_is_usable(dataset.encode(i), self.max_n_fraction)
        ]
        return dataset

    # -- loaders ---------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """Random windows of the current stage's length and batch size."""
        dataset = self._train_dataset(self.seq_len)
        trainer = self.trainer
        sampler = EpochSampler(
            len(dataset),
            epoch=self._epoch if trainer is None else int(trainer.current_epoch),
            skip=self._skip,
            rank=0 if trainer is None else int(trainer.global_rank),
            world_size=1 if trainer is None else int(trainer.world_size),
            current_epoch=None if trainer is None else (lambda: int(trainer.current_epoch)),
        )
        self._skip = {}
        return DataLoader(
            dataset,
            batch_size=self.train_batch_size,
            sampler=sampler,
            drop_last=True,  # a constant batch keeps tokens per optimizer step constant
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _fixed_loader(self, dataset: FixedWindowDataset | None, split: str) -> DataLoader:
        self._require_setup()
        if dataset is None or len(dataset) == 0:
            raise ValueError(
                f"no {split} window: no genome among {[s.name for s in self.sources]} has a "
                f"usable '{split}' interval"
            )
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Fixed non-overlapping valid windows of ``val_max_length``."""
        return self._fixed_loader(self.val_dataset, "valid")

    def test_dataloader(self) -> DataLoader:
        """Fixed non-overlapping test windows of ``val_max_length``."""
        return self._fixed_loader(self.test_dataset, "test")

    # -- resume ----------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """Stage and sampler position, saved in Lightning checkpoints for exact resume."""
        epoch, samples_done = self._epoch, 0
        trainer = self.trainer
        if trainer is not None:
            epoch = int(trainer.current_epoch)
            # Lightning counts a batch as processed once its step ran; that is what to skip.
            processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            samples_done = int(processed) * self.train_batch_size
        return {
            "seq_len": self.seq_len,
            "batch_size": self.train_batch_size,
            "epoch": epoch,
            "samples_done": samples_done,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Restore stage and position; the next ``train_dataloader()`` continues from there."""
        if int(state_dict["seed"]) != self.seed:
            raise ValueError(
                f"the checkpoint's data seed {state_dict['seed']} differs from this run's "
                f"seed {self.seed}; resuming would draw other windows"
            )
        self.set_stage(int(state_dict["seq_len"]), int(state_dict["batch_size"]))
        self._epoch = int(state_dict["epoch"])
        samples_done = int(state_dict["samples_done"])
        self._skip = {self._epoch: samples_done} if samples_done else {}
