"""Fault census: every way we know to lose work, run foreign code or destroy input, tried for real.

    python benchmarks/fault_census.py            # all cases, a few minutes on 2 CPU cores
    python benchmarks/fault_census.py -k kill    # the cases whose name contains 'kill'

Each case runs the real entry point (`python train.py`, `python finetune.py`, `hyenadna ...`) in
a subprocess on the shipped data, does the damage (kill -9, SIGTERM, a full disk, an evil config
or pickle, bad input), and checks what is left. One line per case: the case, the outcome
(`exact`: a resumed run equals the uninterrupted one bit for bit; `named error`: one line naming
the file / key / flag and a non-zero exit; `refused`: stopped before doing anything), and
whether any data was lost (a file truncated, overwritten or deleted, metrics rows missing). A
case that does not behave so is printed as FAIL with the reason, and the exit status is 1.

A full disk is a 1 MB tmpfs where the machine allows mounting one (root), else a file-size
limit (RLIMIT_FSIZE), which fails writes the same way (EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SMOKE = ("experiment=smoke", "baseline.markov_orders=[]", "+model.resid_dropout=0.1", "+model.embed_dropout=0.1",
         "trainer.max_steps=40", "callbacks.checkpoint.last_every_n_steps=3")


@dataclass
class Outcome:
    """What a case showed."""

    outcome: str  # exact | named error | refused | FAIL: ...
    lost: bool
    detail: str = ""


class Census:
    """Runs the cases in a scratch folder and keeps their outcomes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[tuple[str, Outcome]] = []
        self._reference: list[dict[str, str]] | None = None

    # -- helpers -------------------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        p = self.work / name
        shutil.rmtree(p, ignore_errors=True)
        return p

    def run(self, args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)

    def train(self, out: Path, *overrides: str) -> list[str]:
        return [PY, "train.py", *SMOKE, f"output_dir={out}", f"hydra.run.dir={out}.hydra", *overrides]

    def finetune(self, out: Path, *overrides: str) -> list[str]:
        return [PY, "finetune.py", "experiment=ft_smoke", "pretrained=scratch", "model=tiny-1k", "++model.d_model=32",
                "++model.d_inner=64", "++model.l_max=258", f"output_dir={out}", f"hydra.run.dir={out}.hydra",
                *overrides]

    def cli(self, *args: str) -> list[str]:
        return [PY, "-m", "hyenadna.cli", *args]

    @staticmethod
    def rows_of(out: Path) -> list[dict[str, str]]:
        with open(out / "metrics.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in csv.DictReader(f)]

    def reference(self) -> list[dict[str, str]]:
        """metrics.csv rows of the uninterrupted smoke run (made once)."""
        if self._reference is None:
            out = self.folder("reference")
            proc = self.run(self.train(out))
            if proc.returncode != 0:
                raise RuntimeError(f"the reference run failed:\n{proc.stderr[-3000:]}")
            self._reference = self.rows_of(out)
        return self._reference

    @staticmethod
    def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str | None:
        """None if the run failed with a last stderr line holding every needle and no traceback."""
        lines = proc.stderr.strip().splitlines()
        if proc.returncode == 0:
            return "exit status 0"
        if "Traceback" in proc.stderr:
            return "a traceback: " + (lines[-1] if lines else "")
        last = lines[-1] if lines else ""
        missing = [n for n in needles if n not in last]
        return f"last line {last!r} lacks {missing}" if missing else None

    def wait_for_step(self, proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(out / "metrics.csv", newline="") as f:
                    if any(r.get("step") and int(r["step"]) + 1 >= step for r in csv.DictReader(f)):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the run ended or stalled before step {step}")

    def resume_matches(self, out: Path) -> Outcome:
        """Resume `out` in place from its last.ckpt; exact if its rows equal the reference's."""
        proc = self.run(self.train(out, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"))
        if proc.returncode != 0:
            return Outcome(f"FAIL: the resume failed: {proc.stderr.strip().splitlines()[-1:]}", True)
        ok = self.rows_of(out) == self.reference()
        return Outcome("exact" if ok else "FAIL: resumed rows differ from the uninterrupted run", not ok)

    # -- training ------------------------------------------------------------------------------

    def kill_9(self) -> Outcome:
        out = self.folder("kill9")
        proc = subprocess.Popen(self.train(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_for_step(proc, out, 17)
        proc.kill()
        proc.wait()
        if not (out / "checkpoints" / "last.ckpt").is_file():
            return Outcome("FAIL: no last.ckpt after kill -9", True)
        return self.resume_matches(out)

    def signal_case(self, signum: int) -> Outcome:
        out = self.folder(f"signal{signum}")
        proc = subprocess.Popen(self.train(out, "callbacks.checkpoint.last_every_n_steps=1000"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.wait_for_step(proc, out, 10)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 128 + signum or "ckpt_path=" not in err:
            return Outcome(f"FAIL: exit {proc.returncode}, stderr {err.strip().splitlines()[-1:]}", True)
        return self.resume_matches(out)

    def full_disk_training(self) -> Outcome:
        out = self.folder("fulldisk_train")
        out.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)],
                                 capture_output=True).returncode == 0
        try:
            if mounted:
                proc = self.run(self.train(out / "run", "callbacks.checkpoint.last_every_n_steps=1"))
                needle = "no space left on the device"
            else:  # a file-size limit: checkpoints (~600 kB) cannot be written at all
                proc = self.run(self.train(out / "run", "callbacks.checkpoint.last_every_n_steps=1"),
                                preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                                    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))))
                needle = "File too large"
            bad = self.one_line_error(proc, needle)
            ckpts = out / "run" / "checkpoints"
            leftovers = [p.name for p in ckpts.iterdir() if p.name != "last.ckpt"] if ckpts.is_dir() else []
            last = ckpts / "last.ckpt"
            loads = True
            if last.is_file():
                import torch

                try:
                    torch.load(last, map_location="cpu", weights_only=True)
                except Exception:
                    loads = False
            lost = bool(leftovers) or not loads
            if bad or lost:
                return Outcome(f"FAIL: {bad or ''} leftovers {leftovers} last.ckpt loads: {loads}", lost)
            return Outcome("named error", False, "tmpfs" if mounted else "RLIMIT_FSIZE")
        finally:
            if mounted:
                subprocess.run(["umount", str(out)], capture_output=True)

    def reused_output_dir(self) -> Outcome:
        out = self.folder("finished")
        if self.run(self.train(out, "trainer.max_steps=4")).returncode != 0:
            return Outcome("FAIL: the first run failed", False)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        proc = self.run(self.train(out, "trainer.max_steps=4"))
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        bad = self.one_line_error(proc, "already holds a run", "ckpt_path=")
        return Outcome(f"FAIL: {bad}" if bad else "refused", after != before)

    def evil_target(self, how: str) -> Outcome:
        out = self.folder(f"evil_{how}")
        marker = self.work / f"pwned_{how}"
        evil = self.work / "evil.pt"
        make_evil_pickle(evil, marker)
        overrides = ["+callbacks.x._target_=hyenadna.checkpoint.torch.load", f"+callbacks.x.f={evil}",
                     "+callbacks.x.weights_only=false"]
        if how == "experiment":
            exp = self.work / "configs" / "experiment"
            exp.mkdir(parents=True, exist_ok=True)
            (exp / "evil.yaml").write_text("# @package _global_\ncallbacks:\n  x:\n"
                                           "    _target_: hyenadna.checkpoint.torch.load\n"
                                           f"    f: {evil}\n    weights_only: false\n")
            overrides = [f"hydra.searchpath=[file://{self.work / 'configs'}]", "experiment=evil"]
        proc = self.run(self.train(out, *overrides))
        bad = self.one_line_error(proc, "is not allowed")
        if marker.exists():
            return Outcome("FAIL: the pickle's code ran", True)
        return Outcome(f"FAIL: {bad}" if bad else "refused", False)

    def evil_checkpoint(self) -> Outcome:
        out = self.folder("evil_ckpt")
        marker = self.work / "pwned_ckpt"
        evil = self.work / "evil.ckpt"
        make_evil_pickle(evil, marker)
        proc = self.run(self.train(out, f"ckpt_path={evil}"))
        bad = self.one_line_error(proc, str(evil))
        if marker.exists():
            return Outcome("FAIL: the pickle's code ran", True)
        return Outcome(f"FAIL: {bad}" if bad else "refused", False)

    def bad_value(self) -> Outcome:
        proc = self.run(self.train(self.folder("bad_value"), "optimizer.lr=fast"))
        bad = self.one_line_error(proc, "optimizer.lr", "'fast'")
        return Outcome(f"FAIL: {bad}" if bad else "named error", False)

    def checkpoint_dir_is_a_file(self) -> Outcome:
        out = self.folder("ckpt_file")
        blocker = self.work / "a_file"
        blocker.write_text("keep me")
        proc = self.run(self.train(out, f"callbacks.checkpoint.dirpath={blocker}"))
        bad = self.one_line_error(proc, str(blocker), "is a file")
        trained = (out / "metrics.csv").exists()
        lost = blocker.read_text() != "keep me"
        return Outcome(f"FAIL: {bad or 'trained first'}" if bad or trained else "refused", lost)

    # -- finetuning ----------------------------------------------------------------------------

    def finetune_diverges(self) -> Outcome:
        out = self.folder("ft_nan")
        proc = self.run(self.finetune(out, "method.lr=1e6"))
        bad = self.one_line_error(proc, "training loss became nan")
        wrote = (out / "results.json").exists()
        return Outcome(f"FAIL: {bad or 'results.json written'}" if bad or wrote else "named error", False)

    def bad_targets(self, label: str, problem: str) -> Outcome:
        task = self.work / f"task_{problem}_{label}"
        task.mkdir(parents=True, exist_ok=True)
        rows = ["sequence,label"] + [f"{'ACGT' * 8},{label if i == 3 else i % 2}" for i in range(12)]
        for split in ("train", "test"):
            (task / f"{split}.csv").write_text("\n".join(rows) + "\n")
        proc = self.run(self.finetune(self.folder(f"ft_{problem}_{label}"), "task=table", f"task.data={task}",
                                      f"task.problem_type={problem}"))
        bad = self.one_line_error(proc, "train.csv:5", repr(label))
        return Outcome(f"FAIL: {bad}" if bad else "refused", False)

    # -- the hyenadna command -------------------------------------------------------------------

    def model(self) -> Path:
        """A tiny causal LM folder (save_pretrained), a FASTA of four records and a VCF, made once."""
        folder = self.work / "model"
        if not folder.is_dir():
            import torch

            from hyenadna.checkpoint import save_pretrained
            from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM

            torch.manual_seed(0)
            save_pretrained(HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=258)), folder)
            import random

            rng = random.Random(0)
            genome = "".join(rng.choice("ACGT") for _ in range(2000))
            (self.work / "ref.fa").write_text(">chr1\n" + "\n".join(genome[i:i + 60] for i in range(0, 2000, 60)) + "\n")
            (self.work / "in.fa").write_text("".join(f">r{i}\n{genome[i * 200:i * 200 + 150]}\n" for i in range(4)))
            alt = {"A": "C", "C": "G", "G": "T", "T": "A"}
            (self.work / "v.vcf").write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(
                f"chr1\t{p}\tv{p}\t{genome[p - 1]}\t{alt[genome[p - 1]]}\t.\t.\t.\n" for p in (500, 900, 1300)))
        return folder

    def cli_case(self, args: list[str], needles: tuple[str, ...], keep: list[Path], expect_code: int = 1,
                 **kwargs) -> Outcome:  # type: ignore[no-untyped-def]
        """Run `hyenadna args`; a one-line error holding `needles`, exit `expect_code`, `keep` unchanged."""
        before = {p: p.read_bytes() for p in keep if p.is_file()}
        proc = self.run(self.cli(*args), **kwargs)
        bad = self.one_line_error(proc, *needles)
        if not bad and proc.returncode != expect_code:
            bad = f"exit {proc.returncode}, not {expect_code}"
        lost = {p: p.read_bytes() for p in keep if p.is_file()} != before
        return Outcome(f"FAIL: {bad}" if bad else "named error", lost)

    def score_onto_input(self) -> Outcome:
        m, fa = self.model(), self.work / "in.fa"
        result = self.cli_case(["score", str(m), str(fa), "-o", str(fa), "--no-progress"],
                               ("is the same file as the input",), [fa])
        return Outcome("refused", result.lost) if result.outcome == "named error" else result

    def vep_into_a_folder(self) -> Outcome:
        m = self.model()
        (self.work / "outdir").mkdir(exist_ok=True)
        return self.cli_case(["vep", str(m), "--vcf", str(self.work / "v.vcf"), "--fasta", str(self.work / "ref.fa"),
                              "--window", "200", "-o", f"{self.work / 'outdir'}/", "--no-progress"],
                             ("is a folder",), [])

    def score_full_disk(self) -> Outcome:
        m, out = self.model(), self.work / "scores.tsv"
        out.write_text("the previous scores\n")
        return self.cli_case(["score", str(m), str(self.work / "in.fa"), "-o", str(out), "--no-progress"],
                             (str(out),), [out],
                             preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                                 resource.setrlimit(resource.RLIMIT_FSIZE, (60, 60))))

    def truncated_gzip_input(self) -> Outcome:
        m, gz = self.model(), self.work / "cut.fa.gz"
        import gzip

        data = gzip.compress((self.work / "in.fa").read_bytes() * 20)
        gz.write_bytes(data[: len(data) // 2])
        return self.cli_case(["embed", str(m), str(gz), "-o", str(self.work / "e.npy"), "--no-progress"],
                             (str(gz), "truncated"), [gz])

    def truncated_bgzf_reference(self) -> Outcome:
        m, ref = self.model(), self.work / "cut_ref.fa.gz"
        from Bio import bgzf

        with bgzf.BgzfWriter(str(self.work / "full_ref.fa.gz")) as w:
            w.write((self.work / "ref.fa").read_text())
        data = (self.work / "full_ref.fa.gz").read_bytes()
        ref.write_bytes(data[: len(data) - 40])
        return self.cli_case(["vep", str(m), "--vcf", str(self.work / "v.vcf"), "--fasta", str(ref), "--window", "200",
                              "-o", str(self.work / "vep.tsv"), "--no-progress"], (str(ref),), [ref])

    def vep_scores_nothing(self) -> Outcome:
        m, vcf = self.model(), self.work / "wrong_ref.vcf"
        vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\t500\tx\tN\tA\nchr9\t10\ty\tA\tC\n")
        return self.cli_case(["vep", str(m), "--vcf", str(vcf), "--fasta", str(self.work / "ref.fa"), "--window", "200",
                              "-o", str(self.work / "none.tsv"), "--no-progress"], ("scored 0 of 2",), [])

    def embed_into_old_shards(self) -> Outcome:
        m, shards = self.model(), self.work / "shards"
        shards.mkdir(exist_ok=True)
        (shards / "shard-00000.pt").write_bytes(b"an earlier run's shard")
        result = self.cli_case(["embed", str(m), str(self.work / "in.fa"), "-o", str(shards), "--no-progress"],
                               ("is not empty",), [shards / "shard-00000.pt"])
        return Outcome("refused", result.lost) if result.outcome == "named error" else result

    def bad_flags(self) -> Outcome:
        m = self.model()
        for args, flag in ((["embed", str(m), str(self.work / "in.fa"), "-o", str(self.work / "x"), "--shard-size", "0"],
                            "--shard-size"),
                           (["generate", str(m), "--prompt", "ACGT", "--top-k", "0"], "--top-k"),
                           (["embed", str(m), str(self.work / "v.vcf"), "-o", str(self.work / "y.npy")], "--format")):
            result = self.cli_case(args, (flag,), [], expect_code=2 if flag != "--format" else 1)
            if result.outcome != "named error":
                return Outcome(f"{result.outcome} ({flag})", result.lost)
        return Outcome("named error", False, "--shard-size, --top-k, --format")

    def evil_model(self) -> Outcome:
        marker, evil = self.work / "pwned_model", self.work / "evil_model.ckpt"
        make_evil_pickle(evil, marker)
        result = self.cli_case(["score", str(evil), str(self.work / "in.fa"), "--no-progress"], (str(evil),), [])
        if marker.exists():
            return Outcome("FAIL: the pickle's code ran", True)
        return Outcome("refused", result.lost) if result.outcome == "named error" else result

    def config_disagrees(self) -> Outcome:
        src, folder = self.model(), self.work / "model_999"
        shutil.copytree(src, folder, dirs_exist_ok=True)
        import json

        cfg = json.loads((folder / "config.json").read_text())
        cfg["d_model"] = 999  # our config.json is flat (format 2)
        (folder / "config.json").write_text(json.dumps(cfg))
        result = self.cli_case(["score", str(folder), str(self.work / "in.fa"), "--no-progress"], ("d_model",), [])
        return Outcome("refused", result.lost) if result.outcome == "named error" else result

    # -- the table -----------------------------------------------------------------------------

    def cases(self) -> dict[str, Callable[[], Outcome]]:
        return {
            "train: kill -9 mid-run, resume from last.ckpt": self.kill_9,
            "train: SIGTERM mid-run, resume": lambda: self.signal_case(signal.SIGTERM),
            "train: Ctrl-C (SIGINT) mid-run, resume": lambda: self.signal_case(signal.SIGINT),
            "train: disk full while checkpointing": self.full_disk_training,
            "train: output_dir of a finished run": self.reused_output_dir,
            "train: evil _target_ on the command line": lambda: self.evil_target("cli"),
            "train: evil _target_ in an experiment YAML": lambda: self.evil_target("experiment"),
            "train: malicious pickle as ckpt_path": self.evil_checkpoint,
            "train: optimizer.lr=fast": self.bad_value,
            "train: checkpoint dirpath is a file": self.checkpoint_dir_is_a_file,
            "finetune: method.lr=1e6 (diverges)": self.finetune_diverges,
            "finetune: regression target 'nan'": lambda: self.bad_targets("nan", "regression"),
            "finetune: regression target 'inf'": lambda: self.bad_targets("inf", "regression"),
            "finetune: class label 'nan'": lambda: self.bad_targets("nan", "single_label"),
            "cli: score -o onto its own input": self.score_onto_input,
            "cli: vep -o a folder": self.vep_into_a_folder,
            "cli: score onto a full disk": self.score_full_disk,
            "cli: embed a truncated .gz": self.truncated_gzip_input,
            "cli: vep on a truncated BGZF reference": self.truncated_bgzf_reference,
            "cli: vep that scores 0 of N": self.vep_scores_nothing,
            "cli: embed into a folder of old shards": self.embed_into_old_shards,
            "cli: bad flag values": self.bad_flags,
            "cli: malicious pickle as MODEL": self.evil_model,
            "cli: config.json disagrees with weights": self.config_disagrees,
        }


class _Evil:
    """Unpickling this creates a file: proof that a loader ran a pickle's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def make_evil_pickle(path: Path, marker: Path) -> None:
    """A torch.save-style file whose unpickling runs code."""
    import torch

    torch.save({"state_dict": _Evil(marker)}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", help="run only the cases whose name contains this text")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault_census_"))
    census = Census(work)
    cases = {name: fn for name, fn in census.cases().items() if not args.k or args.k in name}
    width = max(map(len, cases), default=10)
    print(f"{'case':{width}}  {'outcome':14}  data lost")
    failed = 0
    for name, fn in cases.items():
        start = time.monotonic()
        try:
            result = fn()
        except Exception as err:  # a case that cannot even run is a failure of the census
            result = Outcome(f"FAIL: {type(err).__name__}: {err}", True)
        failed += result.outcome.startswith("FAIL")
        note = f"  ({result.detail})" if result.detail else ""
        print(f"{name:{width}}  {result.outcome:14}  {'yes' if result.lost else 'no'}"
              f"   {time.monotonic() - start:5.1f} s{note}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"scratch folder kept: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
