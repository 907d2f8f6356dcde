"""hyenadna.runtime: huge pages cut the page faults of large tensors; keep_freed_memory reuses
freed tensors instead of faulting them in again; both config switches are checked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hyenadna.runtime import thp_mode

# Allocate and free a 128 MB tensor 8 times (torch.ones touches every page) and count the page
# faults of the loop. Run in a fresh interpreter: the setting is per process and permanent.
SCRIPT = """
import os, resource, sys, torch
from hyenadna.runtime import keep_freed_memory
if sys.argv[1] == "huge":
    assert os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
if sys.argv[1] == "keep":
    why = keep_freed_memory()
    assert why is None, why
torch.ones(1 << 25)  # warm up: first allocation of this size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    x = torch.ones(1 << 25)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


needs_thp = pytest.mark.skipif(thp_mode() not in ("madvise", "always"),
                               reason="kernel transparent huge pages off or absent")


def env_without_thp() -> dict[str, str]:
    """This environment minus THP_MEM_ALLOC_ENABLE (the test session itself runs with it on:
    conftest.py), for a fresh interpreter that decides for itself."""
    return {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}


def page_faults(mode: str) -> int:
    env = env_without_thp()
    if mode == "huge":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip())



@needs_thp
def test_huge_pages_cut_page_faults_of_large_tensors() -> None:
    default, huge = page_faults("default"), page_faults("huge")
    pages = (1 << 25) * 4 // 4096
    assert default > 4 * pages
    assert huge < default / 8  # 2 MB pages: 512x fewer faults where the kernel has them to give


# Allocate and free a 3 MB tensor 50 times. With PyTorch's huge-page requests alone, each is a
# fresh mmap (page-aligned requests skip glibc's adaptive threshold); use_huge_pages keeps them.
MID_SIZE = """
import os, resource, sys
from hyenadna.runtime import use_huge_pages
if sys.argv[1] == "env-only":
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
else:
    use_huge_pages()
import torch
torch.ones(3 << 18)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    x = torch.ones(3 << 18)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@needs_thp
def test_use_huge_pages_keeps_mid_size_tensors_in_the_heap() -> None:
    env = env_without_thp()
    faults = {mode: int(subprocess.run([sys.executable, "-c", MID_SIZE, mode], capture_output=True, text=True,
                                       check=True, env=env).stdout)
              for mode in ("env-only", "use_huge_pages")}
    assert faults["env-only"] > 50 * 100  # a fresh mapping each time (768 small pages, or a few huge ones)
    # The block is reused: 0 faults when this test runs alone. Inside the full suite some runs saw
    # 258 and one 5140 (against 12945 for the fresh mappings of the same run; the cause is not
    # known), so the bound is relative to the fresh-mapping case of the same run.
    assert faults["use_huge_pages"] < faults["env-only"] / 2, faults


HUGE_STATE = """
import sys, torch
from hyenadna.runtime import huge_pages_state, use_huge_pages
if sys.argv[1] == "late":
    torch.ones(4)  # PyTorch's first CPU allocation reads the variable: too late after this
use_huge_pages(sys.argv[1] != "off")
on, why = huge_pages_state()
print(on, why)
"""


@needs_thp
@pytest.mark.parametrize(("when", "expected"), [("early", "True on (kernel THP mode"),
                                                ("late", "False THP_MEM_ALLOC_ENABLE=1 was set after"),
                                                ("off", "False THP_MEM_ALLOC_ENABLE is not 1")])
def test_huge_pages_state_says_whether_the_setting_took(when: str, expected: str) -> None:
    env = env_without_thp()
    out = subprocess.run([sys.executable, "-c", HUGE_STATE, when], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.startswith(expected), out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_stops_refaulting_freed_tensors() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    pages = (1 << 25) * 4 // 4096  # one 128 MB tensor in 4 KiB pages
    assert default > 4 * pages  # each of the 8 allocations is a fresh mmap, faulted in again
    assert kept <= 2 * pages  # the freed block is reused: at most one more fault-in, not eight


@pytest.mark.parametrize("config_name", ["train", "finetune"])
def test_config_switches_have_their_defaults_and_are_checked(config_name: str, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from hyenadna.finetune import REPO_ROOT
    from hyenadna.pretrain import TOP_LEVEL_KEYS
    from hyenadna.run import start_run
    from hyenadna.ops.buffers import buffer_pool

    switches = ("cpu_keep_freed_memory", "cpu_huge_pages", "cpu_reuse_buffers")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs" / config_name), version_base="1.3"):
        assert compose(config_name).cpu_keep_freed_memory is False
        assert compose(config_name).cpu_huge_pages is True
        assert compose(config_name).cpu_reuse_buffers is True
        bad = [compose(config_name, overrides=[f"output_dir={tmp_path}", f"{key}=yes"]) for key in switches]
        off = compose(config_name, overrides=[f"output_dir={tmp_path}", "cpu_reuse_buffers=false"])
        on = compose(config_name, overrides=[f"output_dir={tmp_path}"])
    for key, cfg in zip(switches, bad):
        with pytest.raises(ValueError, match=f"{key} must be true or false, got 'yes'"):
            start_run(cfg, frozenset(cfg))
    assert set(switches) <= TOP_LEVEL_KEYS
    try:
        start_run(off, frozenset(off))
        assert buffer_pool.enabled is False
    finally:
        start_run(on, frozenset(on))
    assert buffer_pool.enabled is buffer_pool.available


def test_buffer_pool_reuses_a_storage_only_once_nothing_references_it() -> None:
    import torch

    from hyenadna.ops.buffers import BufferPool

    pool = BufferPool(min_bytes=1024)
    a = pool.empty((64, 64), torch.float32, "cpu")  # 16 KB
    first = a.data_ptr()
    assert a.shape == (64, 64) and a.is_contiguous() and not a._is_view()  # in-place ops act as on a fresh tensor
    b = pool.empty((64, 64), torch.float32, "cpu")
    assert b.data_ptr() != first  # a is alive
    view = a[:, :3]
    del a
    c = pool.empty((64, 64), torch.float32, "cpu")
    assert c.data_ptr() not in (first, b.data_ptr())  # a view still holds a's storage
    ptrs = {first, b.data_ptr(), c.data_ptr()}
    del view, b, c
    d = pool.empty((64, 32), torch.complex64, "cpu")  # same byte size, other dtype and shape
    assert d.data_ptr() in ptrs and d.dtype == torch.complex64
    assert pool.held_bytes() == 3 * 16384
    pool.empty((8,), torch.float32, "cpu")  # below min_bytes
    with torch.inference_mode():
        assert pool.empty((64, 64), torch.float32, "cpu").is_inference()  # never pooled
    assert pool.empty((64, 64), torch.float32, "meta").is_meta  # other devices: never pooled
    assert pool.held_bytes() == 3 * 16384
    assert pool.release() == 2 * 16384  # d's storage is in use
    assert pool.held_bytes() == 16384
    del d
    assert pool.release() == 16384 and pool.held_bytes() == 0


def test_buffer_pool_releases_idle_storages_of_a_size_no_longer_asked_for() -> None:
    import torch

    from hyenadna.ops.buffers import BufferPool

    pool = BufferPool(min_bytes=1024, stale_after=4)
    kept = pool.empty((16, 64), torch.float32, "cpu")  # 4 KB, in use throughout: never dropped
    pool.empty((64, 64), torch.float32, "cpu")  # 16 KB, idle from now on: the shape is gone
    for _ in range(8):  # the 8 KB shape, one storage reused
        pool.empty((32, 64), torch.float32, "cpu")
    assert pool.held_bytes() == 4096 + 8192
    assert kept.data_ptr() != 0
    disabled = BufferPool(min_bytes=1024)
    disabled.enabled = False
    disabled.empty((64, 64), torch.float32, "cpu")
    assert disabled.held_bytes() == 0


def test_resolve_threads_gives_the_fair_share_of_the_cores(monkeypatch, tmp_path) -> None:
    import hyenadna.runtime as runtime

    for key in ("HYENADNA_JOBS", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HYENADNA_JOBS_DIR", str(tmp_path / "jobs"))  # no other job registered
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert runtime.resolve_threads(None) is None
    assert runtime.resolve_threads(3) == 3
    assert runtime.resolve_threads("auto") == 16
    monkeypatch.setenv("HYENADNA_JOBS", "3")
    assert runtime.resolve_threads("auto") == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.resolve_threads("auto") == 2
    monkeypatch.setenv("HYENADNA_JOBS", "40")
    assert runtime.resolve_threads("auto") == 1  # never 0
    monkeypatch.delenv("HYENADNA_JOBS")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert runtime.resolve_threads("auto") == 4  # the shell's choice caps it
    for bad in (0, -2, True, "many", 1.5):
        with pytest.raises(ValueError, match="torch_threads must be"):
            runtime.resolve_threads(bad)
    monkeypatch.setenv("HYENADNA_JOBS", "two")
    with pytest.raises(ValueError, match="HYENADNA_JOBS must be a positive integer, got 'two'"):
        runtime.resolve_threads("auto")


def _register_process(root, pid: int) -> None:
    """An entry for process `pid` in the job registry at `root`, as its own `register` writes it."""
    from hyenadna.runtime import _start_time

    root.mkdir(exist_ok=True)
    (root / str(pid)).write_text(_start_time(pid))


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the job registry reads /proc")


@needs_proc
def test_job_registry_counts_running_jobs_and_drops_ended_ones(tmp_path) -> None:
    from hyenadna.runtime import JobRegistry

    root = tmp_path / "jobs"
    registry = JobRegistry(root)
    assert registry.count() == 1  # no folder yet: this job alone
    assert registry.register()
    assert registry.register()  # once per process, however often
    assert sorted(p.name for p in root.iterdir()) == [str(os.getpid())]
    assert registry.count() == 1
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _register_process(root, other.pid)
        (root / "999999999").write_text("12345")  # a job killed with -9: no such process now
        (root / str(os.getppid())).write_text("1")  # a live pid, but not the process that wrote it
        (root / "notes.txt").write_text("not an entry")
        assert registry.count() == 2
        assert sorted(p.name for p in root.iterdir()) == sorted([str(os.getpid()), str(other.pid), "notes.txt"])
    finally:
        other.kill()
        other.wait()
    assert registry.count() == 1
    assert not (root / str(other.pid)).exists()
    registry.unregister()
    assert not (root / str(os.getpid())).exists()
    assert registry.count() == 1  # unregistered, still at least itself
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "planted").symlink_to(target)  # a folder someone else prepared: not written into
    assert not JobRegistry(tmp_path / "planted").register()
    assert list(target.iterdir()) == []


@needs_proc
def test_thread_share_follows_the_jobs_running_now(monkeypatch, tmp_path) -> None:
    """torch_threads: auto without HYENADNA_JOBS: a job that started alone drops to its share when
    another starts, and takes the cores back when that one ends."""
    import torch

    import hyenadna.runtime as runtime

    for key in ("HYENADNA_JOBS", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    root = tmp_path / "jobs"
    monkeypatch.setenv("HYENADNA_JOBS_DIR", str(root))
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    registry = runtime.JobRegistry()
    monkeypatch.setattr(runtime, "jobs", registry)
    n = torch.get_num_threads()
    share = runtime.ThreadShare(interval_s=0.0)
    try:
        registry.register()
        torch.set_num_threads(runtime.resolve_threads("auto"))
        assert torch.get_num_threads() == 4 and share.update() is None
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            _register_process(root, other.pid)
            assert share.update() == 2 and torch.get_num_threads() == 2
            assert "2 job(s) sharing them" in runtime.thread_settings()
            monkeypatch.setenv("HYENADNA_JOBS", "1")  # a choice made in the shell stands
            assert share.update() == 4
            monkeypatch.delenv("HYENADNA_JOBS")
            assert share.update() == 2
        finally:
            other.kill()
            other.wait()
        assert share.update() == 4 and torch.get_num_threads() == 4
        slow = runtime.ThreadShare(interval_s=3600.0)
        assert slow.update() is None  # already right; the next look is an hour away
        torch.set_num_threads(1)
        assert slow.update() is None
    finally:
        registry.unregister()
        torch.set_num_threads(n)


def _threads_in_worker(_: int) -> int:
    import torch

    return torch.get_num_threads()


def test_dataloader_workers_run_one_intra_op_thread() -> None:
    """What lets torch_threads: auto leave workers alone: PyTorch starts each worker with one thread."""
    import torch
    from torch.utils.data import DataLoader

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loader = DataLoader(list(range(2)), batch_size=None, num_workers=1,
                            collate_fn=_threads_in_worker)
        assert list(loader) == [1, 1]
    finally:
        torch.set_num_threads(n)


def test_start_run_prints_the_thread_settings(tmp_path, capsys, monkeypatch) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from hyenadna.finetune import REPO_ROOT
    from hyenadna.run import start_run

    from hyenadna.run import ThreadShareCallback, runtime_callbacks
    from hyenadna.runtime import jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HYENADNA_JOBS_DIR", str(tmp_path / "jobs"))
    n = torch.get_num_threads()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs" / "train"), version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path / 'run'}"])
    assert cfg.torch_threads == "auto"
    try:
        start_run(cfg, frozenset(cfg))
        assert torch.get_num_threads() == 1
        if sys.platform.startswith("linux"):  # registered, so other jobs' `auto` counts this one
            assert (tmp_path / "jobs" / str(os.getpid())).exists()
    finally:
        jobs.unregister()
        torch.set_num_threads(n)
    assert not (tmp_path / "jobs" / str(os.getpid())).exists()
    assert "threads: intra-op 1, inter-op" in capsys.readouterr().out
    assert [type(cb) for cb in runtime_callbacks(cfg)] == [ThreadShareCallback]
    cfg.torch_threads = 2
    assert runtime_callbacks(cfg) == []
