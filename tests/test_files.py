"""Atomic output files and the output-is-not-an-input check (hyenadna/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyenadna.files import atomic_write, check_outputs_are_not_inputs, write_text_atomic


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
