"""hyenadna.runtime.keep_freed_memory: freed tensors are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate and free a 128 MB tensor 8 times (torch.ones touches every page) and count the page
# faults of the loop. Run in a fresh interpreter: the setting is per process and permanent.
SCRIPT = """
import resource, sys, torch
from hyenadna.runtime import keep_freed_memory
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


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_stops_refaulting_freed_tensors() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    pages = (1 << 25) * 4 // 4096  # one 128 MB tensor in 4 KiB pages
    assert default > 4 * pages  # each of the 8 allocations is a fresh mmap, faulted in again
    assert kept <= 2 * pages  # the freed block is reused: at most one more fault-in, not eight


@pytest.mark.parametrize("config_name", ["train", "finetune"])
def test_config_switch_is_off_by_default_and_checked(config_name: str, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from hyenadna.finetune import REPO_ROOT
    from hyenadna.pretrain import TOP_LEVEL_KEYS, start_run

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        assert compose(config_name).cpu_keep_freed_memory is False
        bad = compose(config_name, overrides=[f"output_dir={tmp_path}", "cpu_keep_freed_memory=yes"])
    with pytest.raises(ValueError, match="cpu_keep_freed_memory must be true or false, got 'yes'"):
        start_run(bad, frozenset(bad))
    assert "cpu_keep_freed_memory" in TOP_LEVEL_KEYS
