"""Genome access for pretraining: FASTA files over pyfaidx, BED intervals, coordinate splits.

``Genome`` opens plain FASTA, multi-FASTA and bgzip (BGZF) FASTA directly. A plain-gzip
FASTA (what UCSC ships as ``hg38.fa.gz``) cannot be read at random positions, so it is
converted once to a BGZF copy (next to it, or in ``cache_dir``) that later opens reuse.
Every failure of the file or of pyfaidx is reported as a ``FileNotFoundError`` /
``ValueError`` / ``PermissionError`` naming the file and the problem.

Coordinates are 0-based and half-open everywhere (as in BED): ``fetch("chr1", 0, 10)`` is
the first ten bases of chr1.

Interval splits (``train`` / ``valid`` / ``test``) come from a BED file with a split column
(the layout of the Basenji/Enformer ``sequences_human.bed`` that HyenaDNA pretrains on), or,
without a BED, from ``split_by_coordinates``, which cuts each chromosome into contiguous
ranges. Splits must never share a base; ``check_intervals`` enforces it.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyfaidx
from Bio import bgzf

from hyenadna.files import atomic_write, read_bed_rows

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# Spellings of the split column seen in the wild, mapped to the canonical names.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}

_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- BGZF


class _LeftOpen:
    """A binary file seen through a writer that must not close it (its owner fsyncs and renames it)."""

    mode = "wb"

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj

    def write(self, data: bytes) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.flush()


BGZF_BLOCK_SIZE = 0xFF00  # uncompressed bytes per block, as htslib's bgzip writes them


class BgzfWriter(bgzf.BgzfWriter):
    """Biopython's BGZF (block gzip) writer on a binary file the caller owns.

    Any gzip reader reads the result; pyfaidx (through Biopython), pysam and samtools also seek
    in it. ``close`` writes the EOF marker block and flushes, but leaves ``fileobj`` open, so
    that `hyenadna.files.atomic_write` can fsync and rename it; a ``with`` block that fails
    writes no EOF marker (its file is removed by its owner anyway).
    """

    def __init__(self, fileobj: BinaryIO, level: int = 6) -> None:
        super().__init__(fileobj=_LeftOpen(fileobj), compresslevel=level)

    # Blocks of htslib's size (BGZF_BLOCK_SIZE, 0xff00) instead of Biopython's 65536: a read that
    # ends at the end of a full 65536-byte block needs the in-block offset 65536, which a virtual
    # offset cannot hold, and pyfaidx (through Bio.bgzf) then fails on that window.
    def write(self, data: bytes | str) -> None:
        self._buffer += data.encode("latin-1") if isinstance(data, str) else data
        while len(self._buffer) >= BGZF_BLOCK_SIZE:
            self._write_block(self._buffer[:BGZF_BLOCK_SIZE])
            self._buffer = self._buffer[BGZF_BLOCK_SIZE:]

    def flush(self) -> None:
        if self._buffer:  # write() keeps it under one block
            self._write_block(self._buffer)
            self._buffer = b""
        self._handle.flush()

    def __enter__(self) -> BgzfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


@contextmanager
def write_bgzf(path: str | Path, level: int = 6) -> Iterator[BgzfWriter]:
    """A BGZF writer onto `path`, atomically: the file appears complete, or not at all."""
    with atomic_write(path, "wb") as f, BgzfWriter(f, level=level) as writer:
        yield writer


def is_gzip(path: str | Path) -> bool:
    """True if the file starts with the gzip magic bytes (plain gzip or BGZF)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def is_bgzf(path: str | Path) -> bool:
    """True if the file's first gzip member carries the BGZF ``BC`` extra field."""
    with open(path, "rb") as f:
        head = f.read(16)
    return (
        len(head) == 16
        and head[:2] == _GZIP_MAGIC
        and head[3] & 4 == 4  # FEXTRA flag
        and head[12:14] == b"BC"
    )


def convert_gzip_to_bgzf(src: str | Path, dst: str | Path, chunk_size: int = 1 << 22) -> None:
    """Re-compress a plain-gzip file as BGZF (Biopython's writer), atomically (a partial ``dst`` never exists).

    Progress goes to stderr: the conversion of hg38 (about 0.9 GB compressed) takes minutes.
    """
    src, dst = Path(src), Path(dst)
    total = src.stat().st_size
    print(
        f"[hyenadna] {src} is plain gzip, which cannot be read at random positions; "
        f"converting it once to BGZF at {dst} ...",
        file=sys.stderr,
        flush=True,
    )
    started = last_report = time.monotonic()
    try:
        with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, write_bgzf(dst) as writer:
            while chunk := gz.read(chunk_size):
                writer.write(chunk)
                now = time.monotonic()
                if now - last_report > 10:
                    last_report = now
                    print(
                        f"[hyenadna]   {100 * raw.tell() / total:5.1f}% of {src.name}",
                        file=sys.stderr,
                        flush=True,
                    )
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"FASTA file {src} is a truncated or corrupt gzip file ({err}); "
                         "cannot convert it to BGZF") from None
    except OSError as err:
        raise ValueError(f"cannot convert gzip file {src} to BGZF: {err}") from None
    print(
        f"[hyenadna] converted {src.name} in {time.monotonic() - started:.0f} s; "
        f"later runs reuse {dst}",
        file=sys.stderr,
        flush=True,
    )


# ------------------------------------------------------------------------- Genome


class Genome:
    """Random access to the sequences of one (multi-)FASTA file; opened lazily per process.

    ``path`` may be plain FASTA, BGZF-compressed FASTA (read directly) or plain-gzip FASTA
    (converted once to a cached BGZF copy named ``<name>.bgzf.gz`` in ``cache_dir``, or
    next to the file when ``cache_dir`` is None). The pyfaidx handle is reopened in each
    process, so a Genome can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if not self.path.exists():
            raise FileNotFoundError(f"FASTA file not found: {self.path}")
        if not self.path.is_file():
            raise ValueError(f"FASTA path {self.path} is not a file")
        self.readable_path = self._readable_path()
        self._fasta: pyfaidx.Fasta | None = None
        self._pid: int | None = None
        fasta = self._open()
        lengths = {name: len(record) for name, record in fasta.records.items()}
        empty = [name for name, n in lengths.items() if n == 0]
        if empty:
            raise ValueError(
                f"FASTA file {self.path} has empty record(s) {empty[:5]} (a header with no "
                "sequence); remove them"
            )
        self.chrom_lengths: dict[str, int] = lengths
        if self.readable_path == self.path and not is_gzip(self.path):
            self._check_line_layout(fasta)

    def _check_line_layout(self, fasta: pyfaidx.Fasta) -> None:
        """Refuse records whose lines are not all as long as the first (the last may be shorter).

        The .fai index assumes a fixed line width; pyfaidx accepts a final line that is LONGER
        than the others and then silently returns wrong bases, so check where the newlines of
        each record's last full line and of its final line fall.
        """
        with open(self.path, "rb") as handle:
            for name, rec in fasta.faidx.index.items():
                full, rem = divmod(rec.rlen, rec.lenc) if rec.lenc else (0, 0)
                ends = []
                if full:
                    ends.append(rec.offset + full * rec.lenb - 1)
                if rem:
                    ends.append(rec.offset + full * rec.lenb + rem)
                for pos in ends:
                    handle.seek(pos)
                    byte = handle.read(1)
                    if byte not in (b"\n", b"\r", b""):
                        # the index pyfaidx just wrote describes a layout the file does not have
                        Path(fasta.faidx.indexname).unlink(missing_ok=True)
                        raise ValueError(
                            f"FASTA file {self.path}: record {name!r} has lines of unequal length "
                            f"(expected {rec.lenc} bases per line, as its first line); rewrap it "
                            "to a fixed width (e.g. `seqkit seq -w 60`)"
                        )

    # -- opening -----------------------------------------------------------------

    def _readable_path(self) -> Path:
        """The file pyfaidx reads: the input itself, or its cached BGZF conversion."""
        if not is_gzip(self.path):
            if self.path.name.lower().endswith((".gz", ".bgz")):
                raise ValueError(
                    f"FASTA file {self.path} is named like a gzip file but is not gzip-compressed;"
                    " rename it without the .gz suffix"
                )
            return self.path
        if is_bgzf(self.path):
            if not self.path.name.lower().endswith((".gz", ".bgz")):
                raise ValueError(
                    f"FASTA file {self.path} is bgzip-compressed but its name does not end in "
                    ".gz or .bgz (pyfaidx needs the suffix to read it); rename it"
                )
            return self.path
        target_dir = self.cache_dir if self.cache_dir is not None else self.path.parent
        converted = target_dir / (self.path.name.removesuffix(".gz") + ".bgzf.gz")
        if converted.exists() and converted.stat().st_mtime >= self.path.stat().st_mtime:
            return converted
        try:
            # Probe before converting so that an unwritable folder fails in a second, not
            # after minutes of decompression.
            target_dir.mkdir(parents=True, exist_ok=True)
            probe = target_dir / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise PermissionError(
                f"cannot write the BGZF copy of plain-gzip FASTA {self.path} to {target_dir} "
                f"({err.strerror or err}); pass cache_dir= a writable folder"
            ) from None
        convert_gzip_to_bgzf(self.path, converted)
        return converted

    def _index_paths(self) -> tuple[str | None, str | None]:
        """Where pyfaidx keeps the .fai/.gzi index: next to the file, else in cache_dir."""
        fai = Path(str(self.readable_path) + ".fai")
        folder = self.readable_path.parent
        if fai.exists() or os.access(folder, os.W_OK):
            return None, None
        if self.cache_dir is None:
            raise PermissionError(
                f"cannot write the index of FASTA {self.path}: folder {folder} is not writable; "
                "pass cache_dir= a writable folder"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        base = self.cache_dir / self.readable_path.name
        return str(base) + ".fai", str(base) + ".gzi"

    def _open(self) -> pyfaidx.Fasta:
        """The pyfaidx handle of this process, opening (and indexing) the file if needed."""
        if self._fasta is not None and self._pid == os.getpid():
            return self._fasta
        fai, gzi = self._index_paths()
        existed = Path(fai or str(self.readable_path) + ".fai").exists()
        kwargs = {} if fai is None else {"indexname": fai}
        if gzi is not None and self.readable_path.name.lower().endswith((".gz", ".bgz")):
            kwargs["gzi_indexname"] = gzi
        try:
            fasta = pyfaidx.Fasta(
                str(self.readable_path), as_raw=True, sequence_always_upper=False, **kwargs
            )
        except Exception as err:  # pyfaidx raises many types; the user gets one clear message
            if not existed:
                # pyfaidx may leave a half-written index behind; a later open must not trust it.
                Path(fai or str(self.readable_path) + ".fai").unlink(missing_ok=True)
            raise ValueError(_explain_pyfaidx_error(self._where(), err)) from None
        self._fasta, self._pid = fasta, os.getpid()
        return fasta

    def __getstate__(self) -> dict[str, object]:
        # File handles do not cross process boundaries; each worker reopens.
        return {**self.__dict__, "_fasta": None, "_pid": None}

    # -- access ------------------------------------------------------------------

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Bases [start, end) of ``chrom`` (0-based, half-open), case as in the file; strand "-"
        (BED column 6) returns the reverse complement."""
        seq = self._fetch_forward(chrom, start, end)
        return reverse_complement_str(seq) if strand == "-" else seq

    def _fetch_forward(self, chrom: str, start: int, end: int) -> str:
        length = self.chrom_lengths.get(chrom)
        if length is None:
            raise ValueError(
                f"chromosome {chrom!r} is not in FASTA {self.path} "
                f"(it has {_preview(self.chrom_lengths)})"
            )
        if not 0 <= start <= end <= length:
            raise ValueError(
                f"cannot fetch {chrom}:{start}-{end} from FASTA {self.path}: "
                f"coordinates must satisfy 0 <= start <= end <= {length} (length of {chrom})"
            )
        if start == end:
            return ""
        try:
            return self._open().faidx.fetch(chrom, start + 1, end)
        except Exception as err:  # an I/O or format error deep in pyfaidx/Bio
            if _damaged_gzip(err):
                raise ValueError(
                    f"cannot read {chrom}:{start}-{end}: {_damaged_gzip_message(self._where(), err)}"
                ) from None
            raise ValueError(
                f"cannot read {chrom}:{start}-{end} from FASTA {self.path}: {err}"
            ) from None

    def _where(self) -> str:
        """The FASTA file named in messages, with the BGZF copy pyfaidx actually reads if there is one."""
        if self.readable_path == self.path:
            return str(self.path)
        return f"{self.path} (read through its BGZF copy {self.readable_path})"

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self.chrom_lengths)} sequences)"


_DNA_COMPLEMENT = str.maketrans("ACGTNacgtnRYKMSWBDHVrykmswbdhv", "TGCANtgcanYRMKSWVHDByrmkswvhdb")


def reverse_complement_str(seq: str) -> str:
    """Reverse complement of a DNA string, IUPAC codes and soft-masked case kept."""
    return seq.translate(_DNA_COMPLEMENT)[::-1]


def _damaged_gzip(err: Exception) -> bool:
    """True for what zlib, struct, pyfaidx and Bio.bgzf raise on a truncated or corrupt BGZF stream."""
    if isinstance(err, (EOFError, zlib.error, struct.error)):
        return True  # struct.error: 'unpack requires a buffer of 4 bytes' from a block header cut short
    text = str(err)
    return isinstance(err, (RuntimeError, OSError, ValueError)) and (
        "BGZF" in text or text.startswith(("Decompressed to", "CRC is"))
    )


def _damaged_gzip_message(where: str, err: Exception) -> str:
    """One line for a truncated or corrupt BGZF file."""
    return f"FASTA file {where} is a truncated or corrupt gzip/BGZF file ({type(err).__name__}: {err})"


def _explain_pyfaidx_error(path: str | Path, err: Exception) -> str:
    """A one-line message for a pyfaidx failure, naming the file."""
    text = str(err)
    if _damaged_gzip(err):
        return _damaged_gzip_message(str(path), err)
    if isinstance(err, UnicodeDecodeError):
        return f"{path} is not a FASTA file (it contains binary data)"
    if "Duplicate key" in text:
        return f"FASTA file {path} has duplicate sequence names: {text}"
    if "does not contain a valid sequence" in text or "Unexpected text before" in text:
        return (
            f"{path} is not a valid FASTA file: it must start with a '>name' header line "
            f"({text})"
        )
    return f"cannot read FASTA file {path}: {type(err).__name__}: {text}"


def _preview(names: Iterable[str], limit: int = 8) -> str:
    """First few names for error messages."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A 0-based half-open range [start, end) of ``chrom`` assigned to a split."""

    chrom: str
    start: int
    end: int
    split: str
    # Where the interval came from ("file.bed:12"), for error messages only.
    source: str = field(default="", compare=False)

    def __len__(self) -> int:
        return self.end - self.start

    def where(self) -> str:
        """``file:line`` if known, else the coordinates, for error messages."""
        coords = f"{self.chrom}:{self.start}-{self.end}"
        return f"{self.source} ({coords})" if self.source else coords


def canonical_split(name: str) -> str:
    """Map a split name (train/valid/val/validation/test, any case) to train/valid/test."""
    split = _SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)} (or 'val')")
    return split


def read_bed(path: str | Path) -> list[Interval]:
    """Read a (gzipped) BED file with columns chrom, start, end, split (extra columns are ignored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"BED file not found: {path}")
    intervals: list[Interval] = []
    for row in read_bed_rows(path, 4, "4 tab-separated columns (chrom, start, end, split)"):
        try:
            split = canonical_split(row.columns[3])
        except ValueError as err:
            raise ValueError(f"{row.where}: {err}") from None
        intervals.append(Interval(row.chrom, row.start, row.end, split, source=row.where))
    if not intervals:
        raise ValueError(f"BED file {path} has no intervals")
    return intervals


def write_bed(path: str | Path, intervals: Iterable[Interval]) -> None:
    """Write intervals as a 4-column BED (chrom, start, end, split), atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        for iv in intervals:
            f.write(f"{iv.chrom}\t{iv.start}\t{iv.end}\t{iv.split}\n")


def check_intervals(chrom_lengths: Mapping[str, int], intervals: Iterable[Interval],
                    fasta: str | Path = "the FASTA") -> None:
    """Raise ValueError if an interval names an absent chromosome, passes its end or if
    two splits share a base."""
    intervals = list(intervals)
    for iv in intervals:
        length = chrom_lengths.get(iv.chrom)
        if length is None:
            raise ValueError(
                f"{iv.where()}: chromosome {iv.chrom!r} is not in FASTA {fasta} "
                f"(it has {_preview(chrom_lengths)})"
            )
        if iv.end > length:
            raise ValueError(
                f"{iv.where()}: interval ends at {iv.end}, past the end of {iv.chrom} "
                f"(length {length}) in FASTA {fasta}"
            )
    overlap = find_cross_split_overlap(intervals)
    if overlap is not None:
        a, b = overlap
        raise ValueError(
            f"split {a.split!r} interval {a.where()} overlaps split {b.split!r} interval "
            f"{b.where()}; held-out bases must not be trained on (data/prepare_hg38.py "
            "--help shows how to clip such a BED)"
        )


def find_cross_split_overlap(intervals: Iterable[Interval]) -> tuple[Interval, Interval] | None:
    """The first pair of intervals of different splits that share a base, or None."""
    by_chrom: dict[str, list[Interval]] = {}
    for iv in intervals:
        by_chrom.setdefault(iv.chrom, []).append(iv)
    for chrom_intervals in by_chrom.values():
        chrom_intervals.sort(key=lambda iv: (iv.start, iv.end))
        # Sweep: remember, per split, the interval reaching furthest right so far.
        furthest: dict[str, Interval] = {}
        for iv in chrom_intervals:
            for split, other in furthest.items():
                if split != iv.split and other.end > iv.start:
                    return other, iv
            best = furthest.get(iv.split)
            if best is None or iv.end > best.end:
                furthest[iv.split] = iv
    return None


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge overlapping or touching intervals of the same chrom and split (sorted output).

    Overlapping BED rows (Basenji tiles its regions with overlap) would otherwise make
    held-out windows repeat bases and over-sample the overlaps in training.
    """
    ordered = sorted(intervals, key=lambda iv: (iv.split, iv.chrom, iv.start, iv.end))
    merged: list[Interval] = []
    for iv in ordered:
        last = merged[-1] if merged else None
        same_run = last is not None and (last.split, last.chrom) == (iv.split, iv.chrom)
        if same_run and iv.start <= last.end:
            end = max(last.end, iv.end)
            merged[-1] = Interval(last.chrom, last.start, end, last.split, last.source)
        else:
            merged.append(iv)
    return merged


def clip_to_held_out(intervals: Iterable[Interval]) -> tuple[list[Interval], int]:
    """Remove from train (and from valid, against test) every base another split holds.

    Returns the clipped intervals and how many input intervals were changed or dropped.
    Held-out splits win: test over valid over train.
    """
    priority = {"test": 0, "valid": 1, "train": 2}
    merged = merge_intervals(intervals)
    kept: list[Interval] = []
    changed = 0
    stronger: dict[str, list[tuple[int, int]]] = {}
    for split in ("test", "valid", "train"):
        for iv in (m for m in merged if m.split == split):
            pieces = [(iv.start, iv.end)]
            for s, e in stronger.get(iv.chrom, []):
                pieces = [p for a, b in pieces for p in _subtract(a, b, s, e)]
            if pieces != [(iv.start, iv.end)]:
                changed += 1
            kept.extend(Interval(iv.chrom, a, b, split, iv.source) for a, b in pieces)
        for iv in (m for m in merged if m.split == split):
            stronger.setdefault(iv.chrom, []).append((iv.start, iv.end))
    kept.sort(key=lambda iv: (iv.chrom, iv.start, priority[iv.split]))
    return kept, changed


def _subtract(a: int, b: int, s: int, e: int) -> list[tuple[int, int]]:
    """[a, b) minus [s, e) as a list of non-empty ranges."""
    if e <= a or s >= b:
        return [(a, b)]
    return [(x, y) for x, y in ((a, s), (e, b)) if y > x]


def split_by_coordinates(
    chrom_lengths: Mapping[str, int], valid_fraction: float, test_fraction: float
) -> list[Interval]:
    """Cut each chromosome into contiguous train | valid | test ranges (in that order).

    A chromosome too short for a held-out range of at least one base keeps it all in train.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"valid_fraction + test_fraction must be < 1 so that something is left to train on, "
            f"got {valid_fraction} + {test_fraction}"
        )
    intervals: list[Interval] = []
    for chrom, length in chrom_lengths.items():
        n_test = int(round(length * test_fraction))
        n_valid = int(round(length * valid_fraction))
        n_train = length - n_valid - n_test
        bounds = [("train", 0, n_train), ("valid", n_train, n_train + n_valid),
                  ("test", n_train + n_valid, length)]  # fmt: skip
        intervals.extend(Interval(chrom, s, e, split) for split, s, e in bounds if e > s)
    return intervals
