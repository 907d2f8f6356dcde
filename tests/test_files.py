"""Atomic output files and the output-is-not-an-input check (hyenadna/files.py)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from hyenadna import files
from hyenadna.files import (
    atomic_outputs,
    atomic_write,
    check_outputs_are_not_inputs,
    describe_os_error,
    naming_os_errors,
    write_text_atomic,
)


class _FullDisk(io.FileIO):
    """A file on a disk with no space left: every write fails with ENOSPC (and names no file)."""

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.tsv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_write(target) as f:
            f.write("new, partial")
            raise RuntimeError("failed half-way")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]  # no temporary file left
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"


def test_atomic_write_uses_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.fa"
    src.write_text(">a\nACGT\n")
    link = tmp_path / "link.fa"
    link.symlink_to(src)
    for out in (src, link, tmp_path / "." / "in.fa"):
        with pytest.raises(ValueError, match=r"-o .* is the same file as the input INPUT"):
            check_outputs_are_not_inputs({"-o": out}, {"INPUT": src})
    assert src.read_text() == ">a\nACGT\n"
    check_outputs_are_not_inputs({"-o": tmp_path / "scores.tsv", "stdout": "-"}, {"INPUT": src, "--fasta": None})


def test_a_full_disk_keeps_the_old_file_leaves_no_temporary_and_names_the_target(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    target = tmp_path / "out.tsv"
    target.write_text("old\n")
    monkeypatch.setattr(files, "open", lambda file, mode, **kw: io.TextIOWrapper(
        io.BufferedWriter(_FullDisk(file, mode.replace("t", ""))), **kw), raising=False)
    with pytest.raises(OSError) as info:
        with atomic_write(target, encoding="utf-8") as f:
            f.write("new\n")  # buffered: the write fails when atomic_write flushes it
    assert describe_os_error(info.value) == f"{target}: no space left on the device"
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_atomic_outputs_renames_files_and_a_folder_together_or_leaves_all_as_they_were(tmp_path: Path) -> None:
    arr, ids, shards = tmp_path / "e.npy", tmp_path / "e.ids.txt", tmp_path / "shards"
    arr.write_text("old array")
    shards.mkdir()  # an empty folder is replaced
    with pytest.raises(OSError) as info:
        with atomic_outputs([arr, ids, shards]) as (arr_tmp, ids_tmp, shards_tmp):
            arr_tmp.write_text("new array")
            shards_tmp.mkdir()
            (shards_tmp / "shard-00000.pt").write_text("x")
            with naming_os_errors(shards_tmp / "shard-00001.pt"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert describe_os_error(info.value) == f"{shards / 'shard-00001.pt'}: no space left on the device"
    assert arr.read_text() == "old array" and not ids.exists() and list(shards.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "shards"]
    with atomic_outputs([arr, ids, shards]) as (arr_tmp, ids_tmp, shards_tmp):
        arr_tmp.write_text("new array")
        ids_tmp.write_text("a\n")
        shards_tmp.mkdir()
        (shards_tmp / "shard-00000.pt").write_text("x")
        assert not ids.exists()  # nothing is renamed before the block ends
    assert arr.read_text() == "new array" and ids.read_text() == "a\n"
    assert [p.name for p in shards.iterdir()] == ["shard-00000.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ids.txt", "e.npy", "shards"]


# ------------------------------------------------------------------- the shared readers


def test_read_fasta_reads_plain_gzip_and_bgzf_alike(tmp_path: Path) -> None:
    import gzip

    from hyenadna.files import read_fasta
    from hyenadna.genome import write_bgzf
    from hyenadna.inference import open_records
    from hyenadna.tasks import iter_fasta

    text = ";old-style comment\n>a desc\nACGT\nacgt\n\n>\nGG\n>c\nT\n"
    expected = [("a", "ACGTacgt", 2), ("record6", "GG", 6), ("c", "T", 8)]
    (tmp_path / "p.fa").write_text(text)
    (tmp_path / "g.fa.gz").write_bytes(gzip.compress(text.encode()))
    with write_bgzf(tmp_path / "b.fa.gz") as w:
        w.write(text.encode())
    for name in ("p.fa", "g.fa.gz", "b.fa.gz"):
        assert list(read_fasta(tmp_path / name)) == expected, name
        assert list(iter_fasta(tmp_path / name)) == expected  # tasks reads through it
        assert list(open_records(tmp_path / name)()) == [r[:2] for r in expected]  # so does the CLI
    (tmp_path / "bad.fa").write_text("ACGT\n>a\nA\n")
    with pytest.raises(ValueError, match=r"bad.fa:1: sequence before the first '>' header"):
        list(read_fasta(tmp_path / "bad.fa"))


def test_read_bed_rows_checks_columns_and_coordinates_and_reads_gzip(tmp_path: Path) -> None:
    import gzip

    from hyenadna.files import read_bed_rows
    from hyenadna.genome import read_bed

    text = "track name=x\n# c\nchr1\t0\t10\ttrain\n\nchr2 5 9 valid\n"
    (tmp_path / "a.bed.gz").write_bytes(gzip.compress(text.encode()))
    rows = list(read_bed_rows(tmp_path / "a.bed.gz"))
    assert [(r.chrom, r.start, r.end, r.where.rsplit(":", 1)[1]) for r in rows] == [("chr1", 0, 10, "3"),
                                                                                    ("chr2", 5, 9, "5")]
    assert [iv.split for iv in read_bed(tmp_path / "a.bed.gz")] == ["train", "valid"]
    for line, message in (("chr1\t5", r"x.bed:1: expected at least 3 columns \(chrom, start, end\), got 2"),
                          ("chr1\ta\t9", "x.bed:1: start and end must be integers, got 'a' and '9'"),
                          ("chr1\t9\t9", "x.bed:1: need 0 <= start < end, got start=9 end=9")):
        (tmp_path / "x.bed").write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            list(read_bed_rows(tmp_path / "x.bed"))


@pytest.mark.parametrize(("name", "header", "expected"), [
    ("t.csv", "sequence,label\n", ","), ("t.tsv", "sequence\tlabel\n", "\t"),
    ("t.csv", "sequence\tlabel\n", "\t"),  # the header wins over the name
    ("t.tsv", "sequence\n", "\t"), ("t.tsv.gz", "sequence\n", "\t"), ("t.csv", "sequence\n", ","),
    ("t.txt", "a\tb,c\td\n", "\t"),
])
def test_table_delimiter(name: str, header: str, expected: str) -> None:
    from hyenadna.files import table_delimiter

    assert table_delimiter(name, header) == expected
