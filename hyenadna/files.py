"""Writing output files safely: never onto an input, never a partial file.

Every file a run or a command produces goes through `atomic_write`: the data is written to a
hidden temporary file in the same folder, flushed to disk, and renamed over the target only
when it is complete. A crash, a full disk or a bad record half-way leaves the previous file (or
nothing) in place, never a truncated one. `check_outputs_are_not_inputs` refuses, before any
work, a command whose output path names one of its inputs.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name in the folder of `path` (same filesystem, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


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
    as it was. The file gets the permissions of a plain `open` (the user's umask).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    tmp = temporary_sibling(path)
    f = open(tmp, mode.replace("w", "x"), **open_kwargs)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


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
