"""Writing output files safely: never onto an input, never a partial file.

Every file a run or a command produces goes through `atomic_write`: the data is written to a
hidden temporary file in the same folder, flushed to disk, and renamed over the target only
when it is complete. A crash, a full disk or a bad record half-way leaves the previous file (or
nothing) in place, never a truncated one. `atomic_outputs` does the same for several files or
folders that are written together and renamed together at the end. `check_outputs_are_not_inputs`
refuses, before any work, a command whose output path names one of its inputs. An OSError raised
while writing names the user's output path, never the hidden temporary one, nor nothing at all (a
write on a full disk carries no file name of its own).
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name in the folder of `path` (same filesystem, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


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
