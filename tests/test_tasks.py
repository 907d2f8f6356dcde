"""Task data: every format loads to the same examples, bad input fails clearly, crops, padding, RC."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hyenadna.model import pool_hidden
from hyenadna.tasks import TaskDataModule, carve_validation, crop_ids, load_task
from hyenadna.tokenizer import CharTokenizer


def make_examples(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Random sequences of varying length, two classes, per split."""
    rng = random.Random(seed)
    out = {}
    for split, n in (("train", 12), ("valid", 4), ("test", 6)):
        out[split] = [("".join(rng.choice("ACGT") for _ in range(rng.randint(5, 20))), ["neg", "pos"][i % 2])
                      for i in range(n)]
    return out


def write_gb(root: Path, ex: dict) -> Path:
    for split, items in ex.items():
        for i, (seq, label) in enumerate(items):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.txt").write_text(seq + "\n")
    return root


def write_table(root: Path, ex: dict, ext: str = ".csv", seq_col: str = "sequence", label_col: str = "label") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, items in ex.items():
        with open(root / f"{split}{ext}", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",")
            w.writerow(["id", seq_col, label_col])
            w.writerows([(i, s, y) for i, (s, y) in enumerate(items)])
    return root


def write_fasta(root: Path, ex: dict, table: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, items in ex.items():
        with open(root / f"{split}.fa", "w") as f:
            for i, (s, y) in enumerate(items):
                name = f"{split}{i}" if table else f"{split}{i}|{y}"
                f.write(f">{name} some description\n{s[:7]}\n{s[7:]}\n")
                rows.append((f"{split}{i}", y))
    if table:
        with open(root / "labels.csv", "w") as f:
            f.write("name,label\n" + "".join(f"{n},{y}\n" for n, y in rows))
    return root


def write_bed(root: Path, ex: dict) -> tuple[Path, Path]:
    """One reference record per split; minus-strand intervals store the reverse complement."""
    root.mkdir(parents=True, exist_ok=True)
    tok = CharTokenizer()
    ref = root / "ref.fa"
    with open(ref, "w") as fa:
        for split, items in ex.items():
            chrom, pos, lines = f"chr_{split}", 0, []
            parts = []
            for i, (s, y) in enumerate(items):
                strand = "-" if i % 3 == 0 else "+"
                stored = tok.decode(tok.reverse_complement(tok.encode(s))) if strand == "-" else s
                parts.append("GG" + stored)
                lines.append(f"{chrom}\t{pos + 2}\t{pos + 2 + len(s)}\t{y}\t0\t{strand}\n")
                pos += 2 + len(s)
            fa.write(f">{chrom}\n{''.join(parts)}\n")
            (root / f"{split}.bed").write_text("".join(lines))
    return root, ref


def as_set(task) -> dict[str, list[tuple[str, str]]]:
    return {split: sorted((s, task.label_names[int(y)]) for s, y in zip(sp.sequences, sp.labels))
            for split, sp in task.splits.items()}


def test_every_format_loads_the_same_examples(tmp_path: Path) -> None:
    ex = make_examples()
    expected = {split: sorted((s, y) for s, y in items) for split, items in ex.items()}
    bed_root, ref = write_bed(tmp_path / "bed", ex)
    loaded = [
        load_task(write_gb(tmp_path / "gb", ex)),
        load_task(write_table(tmp_path / "csv", ex)),
        load_task(write_table(tmp_path / "tsv", ex, ".tsv", "seq", "y"), sequence_column="seq", label_columns="y"),
        load_task(write_fasta(tmp_path / "fa", ex)),
        load_task(write_fasta(tmp_path / "fa_table", ex, table=True), label_table=tmp_path / "fa_table" / "labels.csv"),
        load_task(bed_root, reference=ref),
    ]
    for task in loaded:
        assert task.label_names == ["neg", "pos"]
        assert as_set(task) == expected


def test_validation_is_carved_stratified_and_seeded(tmp_path: Path) -> None:
    ex = make_examples()
    ex.pop("valid")
    root = write_table(tmp_path / "t", ex)
    a, b = load_task(root, valid_fraction=0.25, seed=3), load_task(root, valid_fraction=0.25, seed=3)
    assert a.valid_carved
    assert a.splits["valid"].sequences == b.splits["valid"].sequences
    assert sorted(a.splits["valid"].labels.tolist()) == [0, 0, 1, 1]  # 25% of 6 per class, rounded
    together = sorted(a.splits["train"].sequences + a.splits["valid"].sequences)
    assert together == sorted(s for s, _ in ex["train"])
    other = load_task(root, valid_fraction=0.25, seed=4)
    assert other.splits["valid"].sequences != a.splits["valid"].sequences
    with pytest.raises(ValueError, match="valid_fraction"):
        carve_validation(a.splits["train"], 1.5, 0, True)


def test_bad_input_is_named(tmp_path: Path) -> None:
    ex = make_examples()
    root = write_table(tmp_path / "t", ex)
    with pytest.raises(ValueError, match=r"column\(s\) \['target'\] not found.*header"):
        load_task(root, label_columns="target")
    gb = write_gb(tmp_path / "gb", ex)
    (gb / "train" / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class has no sequence files"):
        load_task(gb)
    unseen = {k: list(v) for k, v in ex.items()}
    unseen["test"][0] = ("ACGT", "other")
    with pytest.raises(ValueError, match=r"test\.csv:2: label 'other' in the test split never appears in train"):
        load_task(write_table(tmp_path / "u", unseen))
    empty = {k: list(v) for k, v in ex.items()}
    empty["train"][3] = ("", "neg")
    with pytest.raises(ValueError, match=r"train\.csv:5: empty sequence"):
        load_task(write_table(tmp_path / "e", empty))
    bad = {k: list(v) for k, v in ex.items()}
    bad["valid"][1] = ("ACGT>X", "pos")
    with pytest.raises(ValueError, match=r"valid\.csv:3: .*position 4"):
        load_task(write_table(tmp_path / "b", bad))
    (root / "test.csv").unlink()
    with pytest.raises(ValueError, match="has no test split"):
        load_task(root)
    with pytest.raises(ValueError, match="needs task.reference"):
        load_task(write_bed(tmp_path / "bed", ex)[0])
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "nowhere")
    fasta = write_fasta(tmp_path / "fa", ex, table=True)
    with pytest.raises(ValueError, match=r"train\.fa:1: record name 'train0' has no '\|'"):
        load_task(fasta)


def test_multilabel_and_regression_tables(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("sequence,a,b\nACGT,1,0\nGGCA,0,1\nTTTA,1,1\nCCCA,0,0\n")
    ml = load_task(root, problem_type="multi_label", label_columns=["a", "b"])
    assert ml.label_names == ["a", "b"] and ml.splits["test"].labels.tolist() == [[1, 0], [0, 1], [1, 1], [0, 0]]
    (root / "test.csv").write_text("sequence,a,b\nACGT,2,0\n")
    with pytest.raises(ValueError, match="multilabel targets must be 0 or 1"):
        load_task(root, problem_type="multi_label", label_columns=["a", "b"])
    (root / "test.csv").write_text("sequence,a,b\nACGT,0.5,-3e2\n")
    reg = load_task(root, problem_type="regression", label_columns=["a", "b"])
    assert reg.splits["test"].labels.tolist() == [[0.5, -300.0]]


def test_crop_policies() -> None:
    ids = np.arange(10)
    assert crop_ids(ids, 4, "center", "x").tolist() == [3, 4, 5, 6]
    assert crop_ids(ids, 4, "left", "x").tolist() == [0, 1, 2, 3]
    assert crop_ids(ids, 4, "right", "x").tolist() == [6, 7, 8, 9]
    assert crop_ids(ids, 12, "error", "x").tolist() == list(range(10))
    with pytest.raises(ValueError, match="f.txt: sequence of 10 bases is longer than max_length=4"):
        crop_ids(ids, 4, "error", "f.txt")


@pytest.mark.parametrize("side", ["left", "right"])
def test_datamodule_pads_with_masks_and_infers_length(tmp_path: Path, side: str) -> None:
    ex = make_examples()
    dm = TaskDataModule(str(write_table(tmp_path / "t", ex)), padding_side=side, batch_size=4)
    longest = max(len(s) for items in ex.values() for s, _ in items)
    assert dm.resolve_max_length(1000) == longest
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    for row, (seq, _) in enumerate(ex["valid"]):
        mask = batch["attention_mask"][row].bool()
        assert int(mask.sum()) == len(seq)
        real = batch["input_ids"][row][mask].numpy()
        assert np.array_equal(real, CharTokenizer().encode(seq))
        pad_at = 0 if side == "left" else -1
        if len(seq) < mask.numel():
            assert not bool(mask[pad_at]) and int(batch["input_ids"][row][pad_at]) == CharTokenizer.PAD_ID


def test_length_limits(tmp_path: Path) -> None:
    root = write_table(tmp_path / "t", make_examples())
    dm = TaskDataModule(str(root))
    assert dm.resolve_max_length(8) == 8  # capped by the model, cropped by the default policy
    with pytest.raises(ValueError, match="max_length=50 exceeds what the model allows here"):
        TaskDataModule(str(root), max_length=50).resolve_max_length(30)
    with pytest.raises(ValueError, match="does not fit max_length=8.*task.crop"):
        TaskDataModule(str(root), crop="error").resolve_max_length(8)
    dm = TaskDataModule(str(root), crop="left")
    dm.resolve_max_length(9, add_eos=True)
    dm.setup()
    ids, _ = dm.datasets["train"][0]
    assert ids.size <= 9 and ids[-1] == CharTokenizer.SEP_ID


def test_rc_augmentation_gives_reverse_complements(tmp_path: Path) -> None:
    ex = make_examples()
    dm = TaskDataModule(str(write_table(tmp_path / "t", ex)), rc_aug=True, seed=1)
    dm.resolve_max_length(100, add_eos=True)
    dm.setup()
    tok = CharTokenizer()
    seen = set()
    for _ in range(20):
        ids, _ = dm.datasets["train"][0]
        assert ids[-1] == CharTokenizer.SEP_ID
        fwd = tok.encode(dm.task.splits["train"].sequences[0])
        body = ids[:-1]
        if np.array_equal(body, fwd):
            seen.add("fwd")
        else:
            assert np.array_equal(body, tok.reverse_complement(fwd))
            seen.add("rc")
    assert seen == {"fwd", "rc"}
    assert not dm.datasets["test"].rc_aug


def test_mean_pooling_ignores_padding_on_both_sides() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    garbage = hidden.clone()
    garbage[0, [0, 1, 5, 6]] = 1e6
    pooled = pool_hidden(garbage, "mean", mask)
    assert torch.allclose(pooled[0], hidden[0, 2:5].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))
    assert torch.equal(pool_hidden(garbage, "last", mask)[0], hidden[0, 4])
    assert torch.equal(pool_hidden(garbage, "first", mask)[0], hidden[0, 2])


def test_a_truncated_gzip_fasta_task_file_is_one_error_naming_it(tmp_path: Path) -> None:
    import gzip

    from hyenadna.tasks import iter_fasta

    data = gzip.compress("".join(f">r{i}|a\n{'ACGT' * 50}\n" for i in range(200)).encode())
    path = tmp_path / "train.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path}: truncated or corrupt gzip file"):
        list(iter_fasta(path))
