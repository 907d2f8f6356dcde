"""Labelled nucleotide tasks: read the formats users bring, check them, and serve batches.

Formats (``format=auto`` picks one from what ``data`` holds):

- ``genomic_benchmarks``: ``<data>/{train,test[,valid]}/<class_name>/*.txt``, one sequence per
  file; class names are the folder names.
- ``table``: ``<data>/{train,test[,valid]}.{csv,tsv}``; a sequence column and one or more label
  columns (names configurable; several label columns = multilabel or multi-output regression).
- ``fasta``: ``<data>/{train,test[,valid]}.{fa,fasta,fna}[.gz]``; the label is the text after
  the last ``label_separator`` in the record name, or comes from ``label_table`` (a CSV/TSV
  with columns ``name,label``).
- ``bed``: ``<data>/{train,test[,valid]}.bed`` with columns chrom, start, end, label (label
  column configurable, optional strand in column 6) against the ``reference`` FASTA.

A missing validation split is carved from train (stratified by class, seeded). Every problem
(missing column, empty class folder, empty sequence, bad base, label only seen at test) raises
a ValueError naming the file and line before any training starts.
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hyenadna.files import read_bed_rows, read_fasta, table_delimiter
from hyenadna.tokenizer import CharTokenizer

TaskFormat = Literal["auto", "genomic_benchmarks", "table", "fasta", "bed"]
ProblemType = Literal["single_label", "multi_label", "regression"]
CropPolicy = Literal["center", "left", "right", "error"]

SPLITS = ("train", "valid", "test")
# File stems accepted for each split, in order of preference.
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val", "validation", "dev"), "test": ("test",)}
TABLE_EXTS = (".csv", ".tsv")
FASTA_EXTS = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
BED_EXTS = (".bed",)


@dataclass
class Split:
    """One split: raw sequences, their labels and where each came from (for messages)."""

    sequences: list[str]
    labels: np.ndarray  # (N,) int64 class ids, or (N, C) float32 for multilabel/regression
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, idx: list[int] | np.ndarray) -> Split:
        """The examples at ``idx``, in that order."""
        return Split([self.sequences[i] for i in idx], self.labels[np.asarray(idx, dtype=np.int64)],
                     [self.sources[i] for i in idx])


@dataclass
class TaskData:
    """A loaded task: the three splits plus what a head needs to know."""

    splits: dict[str, Split]
    problem_type: ProblemType
    label_names: list[str]  # class names (single/multi-label) or target names (regression)
    valid_carved: bool = False

    @property
    def num_labels(self) -> int:
        """Output width of the head."""
        return len(self.label_names)

    @property
    def longest(self) -> int:
        """Longest sequence over all splits, in bases."""
        return max(len(s) for split in self.splits.values() for s in split.sequences)


# ------------------------------------------------------------------------------------------
# Reading raw (sequence, label strings, source) records
# ------------------------------------------------------------------------------------------

Record = tuple[str, tuple[str, ...], str]  # sequence, raw label column values, "file:line"


def _find_split_file(root: Path, split: str, exts: tuple[str, ...]) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for ext in exts:
            path = root / f"{stem}{ext}"
            if path.is_file():
                return path
    return None


def detect_format(root: Path) -> str:
    """The format of a task folder, from the train split it holds."""
    if (root / "train").is_dir():
        return "genomic_benchmarks"
    for fmt, exts in (("table", TABLE_EXTS), ("fasta", FASTA_EXTS), ("bed", BED_EXTS)):
        if _find_split_file(root, "train", exts):
            return fmt
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
    raise ValueError(
        f"cannot tell the task format of {root}: expected a train/ folder (GenomicBenchmarks layout) "
        f"or a train file named train.csv/.tsv, train.fa/.fasta/.fna[.gz] or train.bed; found {listing}")


def read_genomic_benchmarks_split(root: Path) -> list[Record]:
    """``root/<class_name>/*.txt``, one sequence per file."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise ValueError(f"{root} has no class folders (expected {root}/<class_name>/*.txt)")
    records: list[Record] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"class folder {class_dir} has no sequence files")
        for f in files:
            seq = "".join(f.read_text(encoding="utf-8", errors="replace").split())
            records.append((seq, (class_dir.name,), str(f)))
    return records


def read_table_split(path: Path, sequence_column: str, label_columns: list[str]) -> list[Record]:
    """A CSV/TSV file with a header (delimiter: `hyenadna.files.table_delimiter`)."""
    with open(path, encoding="utf-8", newline="") as f:
        delimiter = table_delimiter(path, f.readline())
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in [sequence_column, *label_columns] if c not in header]
        if missing:
            raise ValueError(
                f"{path}: column(s) {missing} not found; the header has {header}. Set "
                "task.sequence_column / task.label_columns to the right names")
        records: list[Record] = []
        for line, row in enumerate(reader, start=2):
            labels = tuple((row[c] or "").strip() for c in label_columns)
            where = f"{path}:{line}"
            if any(v == "" for v in labels):
                raise ValueError(f"{where}: empty label in column(s) {label_columns}")
            records.append(((row[sequence_column] or "").strip(), labels, where))
    return records


def iter_fasta(path: Path) -> Iterator[tuple[str, str, int]]:
    """(record name, sequence, header line number) of each FASTA record (`hyenadna.files.read_fasta`)."""
    return read_fasta(path)


def read_label_table(path: Path) -> dict[str, str]:
    """A two-column CSV/TSV (record name, label); a header row is optional."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        delimiter = table_delimiter(path, f.readline())
        f.seek(0)
        for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not row or (line == 1 and [c.strip().lower() for c in row[:2]] == ["name", "label"]):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line}: expected two columns (name, label), got {row}")
            table[row[0].strip()] = row[1].strip()
    if not table:
        raise ValueError(f"label table {path} is empty")
    return table


def read_fasta_split(path: Path, label_separator: str, label_table: dict[str, str] | None) -> list[Record]:
    """FASTA records; the label from the table or after the last separator in the name."""
    records: list[Record] = []
    for name, seq, line in iter_fasta(path):
        where = f"{path}:{line}"
        if label_table is not None:
            if name not in label_table:
                raise ValueError(f"{where}: record {name!r} is not in the label table")
            label = label_table[name]
        else:
            if label_separator not in name:
                raise ValueError(
                    f"{where}: record name {name!r} has no {label_separator!r}; name records "
                    f"'<id>{label_separator}<label>', set task.label_separator, or give task.label_table")
            label = name.rsplit(label_separator, 1)[1]
            if not label:
                raise ValueError(f"{where}: record name {name!r} has an empty label")
        records.append((seq, (label,), where))
    if not records:
        raise ValueError(f"FASTA file {path} has no records")
    return records


def read_bed_split(path: Path, reference: Path, label_column: int) -> list[Record]:
    """BED intervals (chrom, start, end, ..., label in ``label_column`` (1-based), optional strand in 6)."""
    from hyenadna.genome import Genome  # pyfaidx is only needed for this format

    genome = Genome(reference)
    records: list[Record] = []
    n = max(3, label_column)
    expected = f"at least {n} tab-separated columns (chrom, start, end, ..., label in column {label_column})"
    for row in read_bed_rows(path, n, expected):
        cols = row.columns
        try:
            seq = genome.fetch(row.chrom, row.start, row.end, strand=cols[5] if len(cols) >= 6 else "+")
        except ValueError as err:
            raise ValueError(f"{row.where}: {err}") from None
        records.append((seq, (cols[label_column - 1].strip(),), row.where))
    if not records:
        raise ValueError(f"BED file {path} has no intervals")
    return records


# ------------------------------------------------------------------------------------------
# Labels and validation
# ------------------------------------------------------------------------------------------


def _class_order(names: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), anything else alphabetically."""
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


# Spellings of a missing value (pandas writes NaN as "nan", R as "NA"): never a class or a target.
MISSING_LABELS = frozenset({"nan", "na", "n/a", "<na>", "null", "none"})


def _check_not_missing(value: str, where: str) -> None:
    if value.strip().lower() in MISSING_LABELS:
        raise ValueError(f"{where}: label {value!r} reads as a missing value; give the record a label or drop it")


def _to_float(value: str, where: str, what: str) -> float:
    _check_not_missing(value, where)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: {what} label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {what} label {value!r} is not a finite number")
    return number


def build_task(raw: dict[str, list[Record]], problem_type: ProblemType, label_columns: list[str],
               tokenizer: CharTokenizer, valid_fraction: float, seed: int) -> TaskData:
    """Check records, turn label strings into arrays and carve a validation split if needed."""
    if problem_type not in ("single_label", "multi_label", "regression"):
        raise ValueError(f"task.problem_type must be single_label, multi_label or regression, got {problem_type!r}")
    for split, records in raw.items():
        for seq, _, where in records:
            if not seq:
                raise ValueError(f"{where}: empty sequence")
            try:
                tokenizer.encode(seq)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
    n_cols = len(raw["train"][0][1])
    if problem_type == "single_label":
        if n_cols != 1:
            raise ValueError(f"single_label tasks take one label column, got {label_columns}; "
                             "use problem_type=multi_label or regression for several")
        for records in raw.values():
            for _, (label,), where in records:
                _check_not_missing(label, where)
        label_names = _class_order({r[1][0] for r in raw["train"]})
        if len(label_names) < 2:
            raise ValueError(f"the train split has a single class {label_names}; a classifier needs at least two")
        index = {name: i for i, name in enumerate(label_names)}
        for split, records in raw.items():
            for _, (label,), where in records:
                if label not in index:
                    raise ValueError(f"{where}: label {label!r} in the {split} split never appears in train "
                                     f"(train classes: {label_names})")
    else:
        label_names = list(label_columns) if n_cols > 1 or problem_type == "multi_label" else [label_columns[0]]
        if problem_type == "multi_label":
            for records in raw.values():
                for _, labels, where in records:
                    bad = [v for v in labels if v not in ("0", "1", "0.0", "1.0")]
                    if bad:
                        raise ValueError(f"{where}: multilabel targets must be 0 or 1, got {bad[0]!r}")
    splits: dict[str, Split] = {}
    for split, records in raw.items():
        if problem_type == "single_label":
            labels = np.array([index[r[1][0]] for r in records], dtype=np.int64)
        else:
            labels = np.array([[_to_float(v, r[2], problem_type) for v in r[1]] for r in records], dtype=np.float32)
        splits[split] = Split([r[0] for r in records], labels, [r[2] for r in records])
    carved = "valid" not in splits
    if carved:
        splits["train"], splits["valid"] = carve_validation(splits["train"], valid_fraction, seed,
                                                            stratify=problem_type == "single_label")
    return TaskData(splits, problem_type, label_names, carved)


def carve_validation(train: Split, fraction: float, seed: int, stratify: bool) -> tuple[Split, Split]:
    """Hold out ``fraction`` of train as validation, per class when ``stratify``, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"task.valid_fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i in range(len(train)):
        groups.setdefault(int(train.labels[i]) if stratify else 0, []).append(i)
    valid_idx: list[int] = []
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        n = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        valid_idx.extend(idx[:n])
    if not valid_idx:
        raise ValueError(f"train has too few examples ({len(train)}) to carve a validation split")
    held = set(valid_idx)
    train_idx = [i for i in range(len(train)) if i not in held]
    return train.subset(train_idx), train.subset(sorted(valid_idx))


def load_task(data: str | Path, format: TaskFormat = "auto", problem_type: ProblemType = "single_label",
              sequence_column: str = "sequence", label_columns: str | list[str] = "label",
              label_separator: str = "|", label_table: str | Path | None = None,
              reference: str | Path | None = None, bed_label_column: int = 4,
              valid_fraction: float = 0.1, seed: int = 0,
              tokenizer: CharTokenizer | None = None) -> TaskData:
    """Read and check a task folder in any supported format (see the module docstring)."""
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"task data not found: {root}")
    if not root.is_dir():
        raise ValueError(f"task.data must be a folder holding the splits, got the file {root}")
    fmt = detect_format(root) if format == "auto" else format
    columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    if not columns:
        raise ValueError("task.label_columns is empty")
    if fmt != "table" and (len(columns) > 1 or problem_type == "multi_label"):
        raise ValueError(f"{problem_type} with several label columns needs the table (CSV/TSV) format, "
                         f"not {fmt}")
    table = read_label_table(Path(label_table)) if label_table is not None else None
    if fmt == "bed" and reference is None:
        raise ValueError("the bed format needs task.reference=<FASTA file the intervals refer to>")
    raw: dict[str, list[Record]] = {}
    for split in SPLITS:
        if fmt == "genomic_benchmarks":
            path = next((root / n for n in SPLIT_NAMES[split] if (root / n).is_dir()), None)
            if path is not None:
                raw[split] = read_genomic_benchmarks_split(path)
        elif fmt in ("table", "fasta", "bed"):
            exts = {"table": TABLE_EXTS, "fasta": FASTA_EXTS, "bed": BED_EXTS}[fmt]
            path = _find_split_file(root, split, exts)
            if path is not None:
                if fmt == "table":
                    raw[split] = read_table_split(path, sequence_column, columns)
                elif fmt == "fasta":
                    raw[split] = read_fasta_split(path, label_separator, table)
                else:
                    raw[split] = read_bed_split(path, Path(reference), bed_label_column)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown task.format {fmt!r}; choose auto, genomic_benchmarks, table, fasta or bed")
        if split in raw and not raw[split]:
            raise ValueError(f"the {split} split in {root} is empty")
    for split in ("train", "test"):
        if split not in raw:
            names = "/".join(SPLIT_NAMES[split])
            raise ValueError(f"{root} ({fmt} format) has no {split} split (looked for {names} with the "
                             f"{fmt} file names)")
    return build_task(raw, problem_type, columns, tokenizer or CharTokenizer(), valid_fraction, seed)


# ------------------------------------------------------------------------------------------
# Datasets and the data module
# ------------------------------------------------------------------------------------------


def crop_ids(ids: np.ndarray, length: int, policy: CropPolicy, where: str) -> np.ndarray:
    """Cut ``ids`` to at most ``length`` tokens by the crop policy."""
    if ids.size <= length:
        return ids
    if policy == "error":
        raise ValueError(f"{where}: sequence of {ids.size} bases is longer than max_length={length}; "
                         "set task.crop=center|left|right or a larger task.max_length")
    if policy == "left":  # keep the start
        return ids[:length]
    if policy == "right":  # keep the end
        return ids[ids.size - length:]
    if policy == "center":
        start = (ids.size - length) // 2
        return ids[start:start + length]
    raise ValueError(f"task.crop must be center, left, right or error, got {policy!r}")


class EncodedDataset(Dataset):
    """Token ids (already cropped, [SEP] appended if asked) with labels; optional RC augmentation."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray, rc_aug: bool, add_eos: bool, seed: int) -> None:
        self.ids, self.labels, self.rc_aug, self.add_eos = ids, labels, rc_aug, add_eos
        self.rng = np.random.default_rng(seed)
        self.tokenizer = CharTokenizer()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids[i]
        if self.rc_aug and self.rng.random() < 0.5:
            body = ids[:-1] if self.add_eos else ids
            rc = self.tokenizer.reverse_complement(body)
            ids = np.append(rc, ids[-1]) if self.add_eos else rc
        return ids, self.labels[i]


def pad_batch(items: list[tuple[np.ndarray, np.ndarray]], padding_side: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest item: ``input_ids`` and ``attention_mask`` (B, L), ``labels``."""
    length = max(ids.size for ids, _ in items)
    input_ids = np.full((len(items), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), length), dtype=np.int64)
    for row, (ids, _) in enumerate(items):
        start = length - ids.size if padding_side == "left" else 0
        input_ids[row, start:start + ids.size] = ids
        mask[row, start:start + ids.size] = 1
    labels = np.stack([lab for _, lab in items])
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


class TaskDataModule(pl.LightningDataModule):
    """Owns the task files, the splits, the tokenizer and the loaders."""

    def __init__(self, data: str, format: TaskFormat = "auto", problem_type: ProblemType = "single_label",
                 sequence_column: str = "sequence", label_columns: str | list[str] = "label",
                 label_separator: str = "|", label_table: str | None = None, reference: str | None = None,
                 bed_label_column: int = 4, valid_fraction: float = 0.1, max_length: int | None = None,
                 crop: CropPolicy = "center", padding_side: str = "left", rc_aug: bool = False,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if crop not in ("center", "left", "right", "error"):
            raise ValueError(f"task.crop must be center, left, right or error, got {crop!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"task.padding_side must be left or right, got {padding_side!r}")
        if batch_size < 1:
            raise ValueError(f"task.batch_size must be >= 1, got {batch_size}")
        self.data, self.format, self.problem_type = data, format, problem_type
        self.sequence_column, self.label_columns = sequence_column, label_columns
        self.label_separator, self.label_table, self.reference = label_separator, label_table, reference
        self.bed_label_column, self.valid_fraction = bed_label_column, valid_fraction
        self.max_length, self.crop, self.padding_side, self.rc_aug = max_length, crop, padding_side, rc_aug
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = CharTokenizer(padding_side=padding_side)
        self.task: TaskData | None = None
        self.add_eos = False
        self.datasets: dict[str, EncodedDataset] = {}

    def load(self) -> TaskData:
        """Read and check every split (idempotent); call before building the model."""
        if self.task is None:
            self.task = load_task(self.data, self.format, self.problem_type, self.sequence_column,
                                  self.label_columns, self.label_separator, self.label_table, self.reference,
                                  self.bed_label_column, self.valid_fraction, self.seed, self.tokenizer)
        return self.task

    def resolve_max_length(self, limit: int, add_eos: bool = False) -> int:
        """Fix the token length of an example ([SEP] included): task.max_length, else the longest
        sequence, never more than ``limit`` (what the model and soft prompt leave room for)."""
        task = self.load()
        self.add_eos = add_eos
        needed = task.longest + int(add_eos)
        if self.max_length is not None:
            if self.max_length > limit:
                raise ValueError(f"task.max_length={self.max_length} exceeds what the model allows here ({limit} "
                                 "tokens: l_max minus soft-prompt length); lower it or use a model with larger l_max")
            if self.max_length < 1 + int(add_eos):
                raise ValueError(f"task.max_length={self.max_length} is too small")
            length = self.max_length
        else:
            length = min(needed, limit)
        if self.crop == "error" and needed > length:
            split, i = next((n, i) for n, s in task.splits.items() for i, q in enumerate(s.sequences)
                            if len(q) + int(add_eos) > length)
            raise ValueError(f"{task.splits[split].sources[i]}: sequence of {len(task.splits[split].sequences[i])} "
                             f"bases does not fit max_length={length}{' with [SEP]' if add_eos else ''}; "
                             "set task.crop=center|left|right")
        self.max_length = length
        return length

    def setup(self, stage: str | None = None) -> None:
        """Tokenize and crop every split once."""
        if self.datasets:
            return
        task = self.load()
        if self.max_length is None:
            raise RuntimeError("call resolve_max_length(limit) before setup()")
        body = self.max_length - int(self.add_eos)
        for name, split in task.splits.items():
            ids = []
            for seq, where in zip(split.sequences, split.sources):
                x = crop_ids(self.tokenizer.encode(seq), body, self.crop, where)
                ids.append(np.append(x, np.int64(CharTokenizer.SEP_ID)) if self.add_eos else x)
            self.datasets[name] = EncodedDataset(ids, split.labels, self.rc_aug and name == "train",
                                                 self.add_eos, self.seed)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.datasets[split], batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          shuffle=shuffle, num_workers=self.num_workers, generator=generator,
                          collate_fn=partial(pad_batch, padding_side=self.padding_side, pad_id=CharTokenizer.PAD_ID))

    def train_dataloader(self) -> DataLoader:
        """Shuffled, seeded."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """In order."""
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """In order."""
        return self._loader("test", shuffle=False)

    def summary(self) -> str:
        """One line per split: size and class counts."""
        task = self.load()
        lines = []
        for name, split in task.splits.items():
            if task.problem_type == "single_label":
                counts = Counter(int(v) for v in split.labels)
                detail = ", ".join(f"{task.label_names[k]}={counts[k]}" for k in range(task.num_labels))
            else:
                detail = f"{task.num_labels} targets"
            carved = " (carved from train)" if name == "valid" and task.valid_carved else ""
            lines.append(f"{name}: {len(split)} examples{carved}: {detail}")
        return "\n".join(lines)
