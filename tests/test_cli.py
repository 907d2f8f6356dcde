"""The hyenadna command end to end on a tiny model: convert, embed, score, vep, generate, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyenadna.checkpoint import config_to_original, to_official_state_dict
from hyenadna.cli import main
from hyenadna.inference import embed
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, HyenaDNAForCausalLM]:
    """An original-layout release dir (with `.layer`) of a tiny random model."""
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=258, filter_order=8)).eval()
    d = tmp_path_factory.mktemp("release")
    torch.save({"state_dict": to_official_state_dict(model, layer_wrapped=True), "epoch": 1}, d / "weights.ckpt")
    (d / "config.json").write_text(json.dumps(config_to_original(model.config, layer_wrapped=True)))
    return d, model


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "tiny"
    assert main(["convert", str(release[0]), str(out)]) == 0
    return out


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> None:
    path.write_text("".join(f">{n}\n" + "".join(s[i:i + width] + "\n" for i in range(0, len(s), width))
                            for n, s in records))


def test_convert_reports_the_layout(release, tmp_path, capsys) -> None:
    assert main(["convert", str(release[0]), str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "original layout" in out and "l_max=258" in out and "'.layer'" in out
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert main(["convert", str(release[0]), str(tmp_path / "y"), "--shift", "0.0"]) == 0
    assert "shift=0.0" in capsys.readouterr().out
    assert json.loads((tmp_path / "y" / "config.json").read_text())["config"]["shift"] == 0.0


def test_embed_score_and_generate(release, converted, tmp_path, capsys) -> None:
    rng = random.Random(0)
    recs = [(f"r{i}", "".join(rng.choice("ACGT") for _ in range(n))) for i, n in enumerate((50, 9, 120))]
    write_fasta(tmp_path / "in.fa", recs)
    assert main(["embed", str(converted), str(tmp_path / "in.fa"), "-o", str(tmp_path / "e.npy"),
                 "--device", "cpu", "--batch-size", "2", "--no-progress"]) == 0
    expected = embed(release[1], CharTokenizer(), [s for _, s in recs])
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected.numpy(), atol=1e-5)
    assert main(["score", str(release[0]), str(tmp_path / "in.fa"), "-o", str(tmp_path / "s.tsv"),
                 "--no-progress"]) == 0
    rows = [r.split("\t") for r in (tmp_path / "s.tsv").read_text().splitlines()]
    assert rows[0] == ["id", "length", "n_scored", "log_likelihood", "perplexity"]
    assert [r[0] for r in rows[1:]] == ["r0", "r1", "r2"] and all(float(r[3]) < 0 for r in rows[1:])
    capsys.readouterr()
    args = ["generate", str(converted), "--prompt", "ACGTAC", "--max-new-tokens", "30", "--seed", "3",
            "--num-samples", "2", "--top-p", "0.9"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(args + ["--no-cache"]) == 0
    assert capsys.readouterr().out == first
    lines = first.splitlines()
    assert lines[0] == ">sample0" and len(lines[1]) == 30 and set(lines[1]) <= set("ACGT")


def test_vep_writes_scores_and_reports_skips(converted, tmp_path, capsys) -> None:
    rng = random.Random(1)
    chrom = "".join(rng.choice("ACGT") for _ in range(400))
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    alt = {"A": "C", "C": "G", "G": "T", "T": "A"}
    (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "".join([
        f"chr1\t200\tgood\t{chrom[199]}\t{alt[chrom[199]]}\n",
        f"chr1\t201\tbadref\t{alt[chrom[200]]}\t{chrom[200]}\n",
        f"chr1\t5\tedge\t{chrom[4]}\t{alt[chrom[4]]}\n",
        f"chr1\t100\tdel\t{chrom[99:101]}\t{chrom[99]}\n",
    ]))
    assert main(["vep", str(converted), "--vcf", str(tmp_path / "v.vcf"), "--fasta", str(tmp_path / "ref.fa"),
                 "-o", str(tmp_path / "vep.tsv"), "--window", "128", "--rc", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "scored 1 of 4" in captured.out
    assert "skipped 3 (REF mismatch: 1, near chromosome end: 1, not an SNV: 1)" in captured.err
    rows = (tmp_path / "vep.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"chr1\t200\tgood\t{chrom[199]}\t")
    assert rows[1].split("\t")[7] != ""  # reverse-strand LLR present with --rc


def test_errors_are_one_clear_line_with_status_1(release, converted, tmp_path, capsys) -> None:
    write_fasta(tmp_path / "long.fa", [("big", "A" * 300)])
    assert main(["embed", str(converted), str(tmp_path / "long.fa"), "-o", str(tmp_path / "e.npy"),
                 "--no-progress"]) == 1
    assert "record 0 ('big') has 300 bases, more than the model's l_max=258" in capsys.readouterr().err
    assert main(["score", str(converted), str(tmp_path / "long.fa"), "-o", str(tmp_path / "s.tsv")]) == 1
    assert "('big') has 300 bases" in capsys.readouterr().err and not (tmp_path / "s.tsv").exists()
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Exploit(tmp_path / "pwned")}, evil)
    assert main(["convert", str(evil), str(tmp_path / "out")]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_module_entry_point_runs() -> None:
    res = subprocess.run([sys.executable, "-m", "hyenadna.cli", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0 and all(c in res.stdout for c in ("convert", "embed", "score", "vep", "generate"))
