"""Writing output files safely (never onto an input, never a partial file), and reading the text
formats users bring (FASTA, BED, CSV/TSV), plain or gzip/bgzip, with one reader each.

Every file a run or a command produces goes through `atomic_write`: the data is written to a
hidden temporary file in the same folder, flushed to disk, and renamed over the target only
when it is complete. A crash, a full disk or a bad record half-way leaves the previous file (or
nothing) in place, never a truncated one. `atomic_outputs` does the same for several files or
folders that are written together and renamed together at the end. `check_outputs_are_not_inputs`
refuses, before any work, a command whose output path names one of its inputs. An OSError raised
while writing names the user's output path, never the hidden temporary one, nor nothing at all (a
write on a full disk carries no file name of its own).

`read_fasta`, `read_bed_rows` and `table_delimiter` are the only FASTA reader, BED line parser
and CSV-vs-TSV rule of the package (inference, tasks and genome use them); each error names the
file and line.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name in the folder of `path` (same filesystem, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


_TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the `temporary_sibling` files in `folder` that a killed writer left (kill -9 during a
    write); call it only where no other process may be writing. Returns what was removed."""
    removed = []
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if p.is_file() and _TEMPORARY_NAME.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def make_temporary_folder(path: str | os.PathLike[str]) -> Path:
    """A new hidden sibling folder of `path`, with the permissions of a plain ``mkdir`` (the umask).

    `tempfile.mkdtemp` would make it ``drwx------``, which the final rename would keep.
    """
    tmp = temporary_sibling(path)
    tmp.mkdir()
    return tmp


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`.

    On any error (including KeyboardInterrupt) the temporary file is removed and `path` is left
    as it was; an OSError names `path` (also one that named no file, as a full disk's does). The
    file gets the permissions of a plain `open` (the user's umask).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        f = open(tmp, mode.replace("w", "x"), **open_kwargs)
    except OSError as err:
        _name_target(err, tmp, path)
        raise
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as err:
        try:
            f.close()  # flushes the buffer, so it fails again on a full disk: the first error is the one to report
        except OSError:
            pass
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            _name_target(err, tmp, path)
            _give_name(err, path)
        raise
    fsync_folder(path.parent)


def _name_target(err: OSError, tmp: Path, target: Path) -> None:
    """Make an `err` about `tmp` (or about a file in the folder `tmp`) name `target` instead."""
    name = err.filename
    if isinstance(name, str) and (name == str(tmp) or name.startswith(str(tmp) + os.sep)):
        err.filename = str(target) + name[len(str(tmp)):]


def _give_name(err: OSError, path: str | os.PathLike[str]) -> None:
    """Name `path` in an `err` that names no file (what a write on a full disk raises)."""
    # a message-only OSError has no errno; a file name would turn its str() into '[Errno None] None: ...'
    if err.errno is not None and err.filename is None:
        err.filename = os.fspath(path)


@contextmanager
def naming_os_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError raised inside that names no file (a write on a full disk) names `path`."""
    try:
        yield
    except OSError as err:
        _give_name(err, path)
        raise


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file of a folder and the folder itself, to disk."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_folder(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary sibling names for outputs written together; all are renamed onto `paths` at the end.

    The caller creates and writes each temporary as it needs to (a memory-mapped array, a
    folder of shards). When the block ends without an error each one is flushed to disk and
    renamed onto its path (a folder replaces only a missing or empty folder); on any error
    every temporary is removed and every path is left as it was. Errors about a temporary
    (or a file in a temporary folder) name the path the user gave instead.
    """
    targets = [Path(p) for p in paths]
    tmps = [temporary_sibling(p) for p in targets]
    try:
        yield tmps
        for tmp in tmps:
            _fsync_tree(tmp)
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
    except BaseException as err:
        for tmp in tmps:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            for tmp, target in zip(tmps, targets):
                _name_target(err, tmp, target)
        raise
    for folder in dict.fromkeys(t.parent for t in targets):
        fsync_folder(folder)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """`Path.write_text`, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs_are_not_inputs(outputs: Mapping[str, str | os.PathLike[str] | None],
                                 inputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Raise ValueError when an output path is (or resolves to) one of the inputs.

    Both mappings go from the name the user knows (a CLI flag such as ``-o``, ``--fasta``) to a
    path; None entries and ``-`` (stdout/stdin) are ignored.
    """
    for out_name, out in outputs.items():
        if out is None or str(out) == "-":
            continue
        out_path = Path(out)
        for in_name, src in inputs.items():
            if src is None or str(src) == "-":
                continue
            in_path = Path(src)
            if _same_file(out_path, in_path) or out_path.resolve() == in_path.resolve():
                raise ValueError(f"{out_name} {out} is the same file as the input {in_name} {src}; "
                                 "writing it would destroy the input: choose another output path")


def describe_os_error(err: OSError, what: str | os.PathLike[str] | None = None) -> str:
    """One line for an OSError: the file it concerns and the reason (a full disk said plainly)."""
    where = str(what) if what is not None else (err.filename or "")
    if err.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif err.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    else:
        reason = err.strerror or str(err)
    return f"{where}: {reason}" if where else reason


@contextmanager
def open_text(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Open plain or gzip/bgzip text by content, not by name; a damaged gzip stream is a ValueError naming `path`.

    The stream is only decompressed as it is read, so the check wraps the reading done inside
    the ``with`` block (a truncated file fails at its end, after records were already read).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        with open(path, encoding="utf-8", errors="replace") as text:
            yield text
        return
    with io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace") as text:
        try:
            yield text
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise ValueError(f"{path}: truncated or corrupt gzip file ({err})") from None


def read_fasta(path: str | os.PathLike[str]) -> Iterator[tuple[str, str, int]]:
    """Stream (name, sequence, header line number) of each record of a plain, gzip or bgzip FASTA.

    The name is the first word of the header (``record<line>`` for a bare ``>``); sequence lines
    are joined with their case kept; blank lines and ``;`` comment lines are skipped.
    """
    path = Path(path)
    name: str | None = None
    chunks: list[str] = []
    header_line = 0
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(chunks), header_line
                name, chunks, header_line = (line[1:].split() or [f"record{number}"])[0], [], number
            elif name is None:
                raise ValueError(f"{path}:{number}: sequence before the first '>' header; not a FASTA file?")
            else:
                chunks.append(line)
    if name is not None:
        yield name, "".join(chunks), header_line


@dataclass(frozen=True)
class BedRow:
    """One interval line of a BED file: 0-based half-open [start, end), all its columns, its place."""

    chrom: str
    start: int
    end: int
    columns: list[str]
    where: str  # "file.bed:12", for messages


def read_bed_rows(path: str | os.PathLike[str], min_columns: int = 3,
                  expected: str = "at least 3 columns (chrom, start, end)") -> Iterator[BedRow]:
    """Stream the interval lines of a (gzipped) BED file, checked: >= `min_columns` columns and
    integer 0 <= start < end. Blank, ``#``, ``track`` and ``browser`` lines are skipped; columns
    are tab-separated (a line with too few tabs is split on any whitespace). `expected` says what
    the caller needs, for the message of a short line."""
    path = Path(path)
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            where = f"{path}:{number}"
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) < min_columns:
                cols = line.split()
            if len(cols) < min_columns:
                raise ValueError(f"{where}: expected {expected}, got {len(cols)}: {line.strip()!r}")
            try:
                start, end = int(cols[1]), int(cols[2])
            except ValueError:
                raise ValueError(f"{where}: start and end must be integers, got {cols[1]!r} and {cols[2]!r}") from None
            if not 0 <= start < end:
                raise ValueError(f"{where}: need 0 <= start < end, got start={start} end={end}")
            yield BedRow(cols[0], start, end, cols, where)


def table_delimiter(path: str | os.PathLike[str], header: str) -> str:
    """The delimiter of a CSV/TSV file from its header line: tab or comma, whichever it holds more
    of; a header with neither (one column) follows the name (``.tsv``/``.tab`` tab, else comma)."""
    tabs, commas = header.count("\t"), header.count(",")
    if tabs != commas:
        return "\t" if tabs > commas else ","
    name = Path(path).name.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".tab")) else ","
