"""CPU memory settings of the process: transparent huge pages for tensors, and (opt-in) freed
memory kept for reuse by glibc malloc. (The pool that keeps the kernels' own large buffers across
steps is `hyenadna.ops.buffers`.)

Huge pages (`use_huge_pages`, on by default as `cpu_huge_pages` in the train/finetune configs):
PyTorch's CPU allocator asks the kernel for 2 MB transparent huge pages for every tensor of 2 MB
or more when the environment variable THP_MEM_ALLOC_ENABLE is 1. PyTorch reads the variable once,
at its first CPU allocation, so it must be set before then: train.py and finetune.py set it
before importing Lightning (whose import allocates). A large tensor is then faulted in 2 MB at a
time instead of 4 KB, which at long L removes most of a step's page faults and much of its time
(`python benchmarks/bench_page_faults.py --length 1048576 [--no-huge-pages]`). It needs the
kernel's THP mode to be `madvise` or `always` (/sys/kernel/mm/transparent_hugepage/enabled).

Those page-aligned requests bypass glibc's adaptive mmap threshold, so on their own they would
make every tensor between 2 and 32 MB a fresh mmap, faulted in again on each use
(`tests/test_runtime.py` counts the faults). `use_huge_pages` therefore also fixes glibc's mmap
threshold at its 64-bit maximum, 32 MB, with a trim threshold of 64 MB (the pair glibc's own
adaptive rule would reach): smaller blocks are reused from the heap; larger ones are still mapped
fresh and handed back when freed, so the peak resident size stays as it was.

Freed memory (`keep_freed_memory`, opt-in as `cpu_keep_freed_memory`, `--keep-freed-memory` in the
benchmarks): PyTorch's CPU allocator has no cache, so every activation is a fresh `malloc`, and
glibc serves requests above its mmap threshold with a new `mmap` that `free` hands back to the
kernel: a long-sequence step faults in and zeroes every large block again. `keep_freed_memory()`
tells glibc to serve every request from its heap and never return freed memory, so the next step
reuses pages that are already mapped. The price is a higher peak resident size (freed blocks stay
in the process, and the heap fragments; at 1M tokens that can exhaust a small machine), hence
opt-in. The kernels' own large buffers are reused by `hyenadna.ops.buffers` either way; what this
adds is everything else a whole model allocates (MLP, norms, LM head):
`python benchmarks/bench_page_faults.py --model [--keep-freed-memory]`.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_INT_MAX = 2**31 - 1

THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator (c10 alloc_cpu) at its first allocation
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def check_switch(name: str, value: object) -> bool:
    """A true/false config switch (`compile`, `cpu_reuse_buffers`, ...); anything else is an error."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _glibc_mallopt():  # type: ignore[no-untyped-def]
    """glibc's mallopt(param, value) -> 1 on success, or a string saying why there is none."""
    if not sys.platform.startswith("linux"):
        return f"needs glibc on Linux; this is {sys.platform}"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"no glibc mallopt in this process ({e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> str | None:
    """Make glibc malloc keep freed memory for reuse in this process.

    Returns None on success, else why it could not (not Linux, not glibc, mallopt refused); the
    process is then unchanged. Affects allocations made after the call, so call it early.
    """
    mallopt = _glibc_mallopt()
    if isinstance(mallopt, str):
        return mallopt
    # No mmap-backed blocks: large tensors come from the heap; a trim threshold of INT_MAX:
    # freed heap memory is (practically) never given back.
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        return "glibc mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD"
    return None


def use_huge_pages(enabled: bool = True) -> None:
    """Set THP_MEM_ALLOC_ENABLE for this process (1 or 0); when enabling on Linux, also fix glibc's
    mmap threshold at 32 MB (module docstring; a warning where mallopt is missing or refuses).
    The variable is effective only if PyTorch has not yet allocated a CPU tensor:
    `huge_pages_state` tells whether it took."""
    os.environ[THP_ENV] = "1" if enabled else "0"
    if not enabled or not sys.platform.startswith("linux"):
        return
    mallopt = _glibc_mallopt()
    if isinstance(mallopt, str):
        warnings.warn(f"huge pages without the 32 MB mmap threshold: {mallopt}", RuntimeWarning, stacklevel=2)
    elif mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) != 1 or mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) != 1:
        warnings.warn("huge pages without the 32 MB mmap threshold: glibc mallopt refused it", RuntimeWarning,
                      stacklevel=2)


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: 'always', 'madvise' or 'never' ('unknown' where
    the file is missing or unreadable, e.g. not Linux). PyTorch's requests need always or madvise."""
    try:
        return THP_MODE_FILE.read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unknown"


def huge_pages_state() -> tuple[bool, str]:
    """(on, why): whether large CPU tensors get transparent huge pages in this process, and why not.

    Probes the allocator: with THP allocation on, PyTorch page-aligns tensors of 2 MB or more
    (otherwise it aligns to 64 bytes and glibc's mmap'ed blocks start 64 bytes into a page).
    """
    import torch

    if not sys.platform.startswith("linux"):
        return False, f"transparent huge pages are Linux-only; this is {sys.platform}"
    mode = thp_mode()
    if mode == "never":
        return False, f"the kernel's THP mode is 'never' ({THP_MODE_FILE})"
    probes = [torch.empty(3 << 20, dtype=torch.uint8) for _ in range(3)]
    if not all(p.data_ptr() % 4096 == 0 for p in probes):
        if os.environ.get(THP_ENV, "0").strip() in ("", "0"):
            return False, f"{THP_ENV} is not 1"
        return False, (f"{THP_ENV}=1 was set after PyTorch's first CPU allocation, when it reads the "
                       f"variable (set it before importing Lightning, or in the shell)")
    return True, f"on (kernel THP mode '{mode}')"


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------

# Environment variable naming how many hyenadna jobs share this machine's cores (`torch_threads:
# auto` divides the cores available to this process by it); LOCAL_WORLD_SIZE, set by torchrun and
# Lightning for multi-process training on one machine, counts too. Unset, the jobs count each
# other through `JobRegistry`.
JOBS_ENV = "HYENADNA_JOBS"
# Where running jobs note themselves (default: <tempdir>/hyenadna-jobs-<uid>).
JOBS_DIR_ENV = "HYENADNA_JOBS_DIR"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: taskset, cgroups cpusets), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_env(name: str) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {value!r}")
    return int(value)


def _start_time(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat): with
    the pid it names one process, since pids are reused. None where there is no such process (or
    no /proc: not Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": field 3 (state) onwards
    return fields[19] if len(fields) > 19 else None


class JobRegistry:
    """The hyenadna jobs running on this machine, so that `torch_threads: auto` can share the cores
    without being told how many there are (HYENADNA_JOBS).

    Each job writes one file, named by its pid and holding its start time, into a folder of this
    user's (HYENADNA_JOBS_DIR, default <tempdir>/hyenadna-jobs-<uid>); `count` reads the folder and
    counts the files whose process is still the one that wrote them, deleting the others (a job
    killed with -9 leaves its file behind). Linux only (/proc); elsewhere, and where the folder
    cannot be written, every job counts itself alone. Jobs in other containers (another /tmp) or of
    other users are not seen.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._mine: Path | None = None
        self._atexit = False

    @property
    def root(self) -> Path:
        """The registry folder (read from the environment at each use unless given)."""
        if self._root is not None:
            return self._root
        env = os.environ.get(JOBS_DIR_ENV, "").strip()
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return Path(env) if env else Path(tempfile.gettempdir()) / f"hyenadna-jobs-{uid}"

    def register(self) -> bool:
        """Note this process as a running job (again after `unregister`; once per process).
        False where it cannot (no /proc, the folder not writable)."""
        pid = os.getpid()
        token = _start_time(pid)
        if token is None:
            return False
        path = self.root / str(pid)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._ours(self.root):
                return False
            temp = self.root / f".{pid}.tmp"  # then renamed: a reader never sees a half-written entry
            temp.write_text(token)
            os.replace(temp, path)
        except OSError:
            return False
        self._mine = path
        if not self._atexit:
            atexit.register(self.unregister)
            self._atexit = True
        return True

    @staticmethod
    def _ours(folder: Path) -> bool:
        """The folder is a real directory of this user's (in a shared /tmp another user could have
        made it first, with links planted in it)."""
        st = folder.lstat()
        return stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())

    def unregister(self) -> None:
        """Remove this process's entry (a forked child that inherited the object leaves it alone)."""
        if self._mine is not None and self._mine.name == str(os.getpid()):
            self._mine.unlink(missing_ok=True)
            self._mine = None

    def count(self) -> int:
        """Running jobs with an entry, this one included if registered; at least 1."""
        try:
            entries = [p for p in self.root.iterdir() if p.name.isdigit()]
        except OSError:
            return 1
        live = 0
        for path in entries:
            try:
                token = path.read_text().strip()
            except OSError:
                continue  # removed meanwhile
            if token and _start_time(int(path.name)) == token:
                live += 1
            else:
                path.unlink(missing_ok=True)  # a process that has ended (or a reused pid)
        return max(1, live)


jobs = JobRegistry()


def jobs_sharing_cores() -> int:
    """How many processes share this machine's cores: HYENADNA_JOBS x LOCAL_WORLD_SIZE where
    HYENADNA_JOBS is set (a choice made in the shell stands), else the jobs `jobs` counts (each
    rank of a multi-process run registers itself), at least LOCAL_WORLD_SIZE."""
    if os.environ.get(JOBS_ENV, "").strip():
        return _positive_env(JOBS_ENV) * _positive_env("LOCAL_WORLD_SIZE")
    return max(jobs.count(), _positive_env("LOCAL_WORLD_SIZE"))


def resolve_threads(setting: object) -> int | None:
    """The intra-op thread count for a `torch_threads` setting: None -> None (PyTorch's default);
    a positive integer -> itself; 'auto' -> this process's fair share of the cores: the cores in
    its affinity mask over the processes sharing them (`jobs_sharing_cores`), at least 1, and at
    most OMP_NUM_THREADS where that is set (a choice made in the shell stands)."""
    if setting is None:
        return None
    if setting == "auto":
        return _fair_share(jobs_sharing_cores())
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"torch_threads must be a positive integer, 'auto' or null, got {setting!r}")
    return setting


def _fair_share(processes: int) -> int:
    """`torch_threads: auto` for `processes` sharing the cores: cores / processes, at least 1, at
    most OMP_NUM_THREADS where that is set."""
    share = max(1, available_cores() // processes)
    return min(share, _positive_env("OMP_NUM_THREADS")) if os.environ.get("OMP_NUM_THREADS", "").strip() else share


class ThreadShare:
    """`torch_threads: auto` kept up to date while a job runs: `update` (called every step; it
    looks at most once per `interval_s`) recomputes the share from the jobs running now and
    applies it, so a job that started alone gives up cores when a second one starts and takes
    them back when it ends. Without this, the first job keeps all its threads and two jobs on two
    cores run at about half their fair share each (benchmarks/README.md, threads)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.processes = 1  # sharing the cores, at the last look
        self._next = 0.0

    def update(self) -> int | None:
        """The new thread count if it changed (and was applied), else None."""
        import torch

        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        self.processes = jobs_sharing_cores()
        threads = _fair_share(self.processes)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads


def thread_settings() -> str:
    """The thread settings of this process in words, for the start of a run or a benchmark.
    (DataLoader workers need nothing: PyTorch starts each with one intra-op thread.)"""
    import torch

    return (f"threads: intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}, "
            f"{available_cores()} cores available, {jobs_sharing_cores()} job(s) sharing them, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
