"""What train.py and finetune.py print: each Lightning line once, no spurious warning, an honest --help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"train": "experiment=smoke", "finetune": "experiment=ft_smoke"}
# A line of Hydra's job log file: [time][logger][LEVEL] - message
LOG_LINE = re.compile(r"^\[[^\]]+\]\[(?P<name>[^\]]+)\]\[INFO\] - (?P<message>.*)$")


def run_entry_point(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, str(ROOT / f"{prog}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=["train", "finetune"])
def smoke_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(entry point, console output, run folder) of the smoke run, written where Hydra puts a run by
    default: a folder that already holds .hydra/ and <prog>.log when the metrics logger starts."""
    prog = request.param
    run = tmp_path_factory.mktemp(prog) / "run"
    proc = run_entry_point(prog, SMOKE[prog], f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return prog, proc.stdout + proc.stderr, run


def test_each_lightning_line_is_printed_once_and_kept_in_the_run_log(smoke_run: tuple[str, str, Path]) -> None:
    prog, console, run = smoke_run
    logged = [m for line in (run / f"{prog}.log").read_text().splitlines()
              if (m := LOG_LINE.match(line)) and m["name"].startswith("lightning")]
    assert any("GPU available" in m["message"] for m in logged), "Lightning's lines are not in the run's log file"
    lines = console.splitlines()
    for m in logged:
        # finetune.py trains twice (quick pretraining, then finetuning): each line once per time it was logged
        expected = sum(other["message"] == m["message"] for other in logged)
        assert sum(m["message"] in line for line in lines) == expected, m["message"]
    assert not any(LOG_LINE.match(line) for line in lines), "Hydra's formatted copy of a log line on the console"


def test_no_previous_log_files_warning(smoke_run: tuple[str, str, Path]) -> None:
    prog, console, run = smoke_run
    assert "Previous log files" not in console and "will be deleted" not in console
    assert (run / "metrics.csv").is_file()


@pytest.mark.parametrize("prog, groups", [
    ("train", {"data", "experiment", "logger", "model", "trainer"}),
    ("finetune", {"experiment", "logger", "method", "model", "task", "trainer"}),
])
def test_help_lists_only_the_groups_the_entry_point_accepts(prog: str, groups: set[str]) -> None:
    proc = run_entry_point(prog, "--help")
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    listed = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line)
    assert set(listed) == groups
    experiments = listed["experiment"].split(", ")
    assert experiments and all(e.startswith("ft_") == (prog == "finetune") for e in experiments), experiments
