"""The hyenadna command end to end on a tiny model: convert, embed, score, vep, generate, errors."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyenadna.checkpoint import config_to_original, to_official_state_dict
from hyenadna.cli import main
from hyenadna.genome import BgzfWriter, Genome
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
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                                  "tokenizer_config.json"]
    assert main(["convert", str(release[0]), str(tmp_path / "y"), "--shift", "0.0"]) == 0
    assert "shift=0.0" in capsys.readouterr().out
    assert json.loads((tmp_path / "y" / "config.json").read_text())["shift"] == 0.0


def test_convert_makes_folders_with_the_users_umask(release, tmp_path) -> None:
    """The model folder and its files get the permissions of a plain mkdir / open (not mkdtemp's 0o700)."""
    old = os.umask(0o022)
    try:
        assert main(["convert", str(release[0]), str(tmp_path / "m")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()} == {0o644}


def test_embed_score_and_generate(release, converted, tmp_path, capsys) -> None:
    rng = random.Random(0)
    recs = [(f"r{i}", "".join(rng.choice("ACGT") for _ in range(n))) for i, n in enumerate((50, 9, 120))]
    write_fasta(tmp_path / "in.fa", recs)
    assert main(["embed", str(converted), str(tmp_path / "in.fa"), "-o", str(tmp_path / "e.npy"),
                 "--device", "cpu", "--batch-size", "2", "--no-progress"]) == 0
    expected = embed(release[1], CharTokenizer(), [s for _, s in recs])
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected.numpy(), atol=1e-5)
    assert main(["embed", str(converted), str(tmp_path / "in.fa"), "-o", str(tmp_path / "st"), "--device", "cpu",
                 "--batch-size", "2", "--shard-size", "2", "--shard-format", "safetensors", "--no-progress"]) == 0
    from hyenadna.inference import load_embedding_shard

    parts = [load_embedding_shard(p) for p in sorted((tmp_path / "st").iterdir())]
    assert [p["ids"] for p in parts] == [["r0", "r1"], ["r2"]]
    np.testing.assert_allclose(np.concatenate([p["embeddings"] for p in parts]), expected.numpy(), atol=1e-5)
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


def test_vep_region_and_pass_only_through_htslib(converted, tmp_path, capsys) -> None:
    import pysam

    rng = random.Random(2)
    chrom = "".join(rng.choice("ACGT") for _ in range(600))
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    alt = {"A": "C", "C": "G", "G": "T", "T": "A"}
    header = ("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=600>\n##FILTER=<ID=q10,Description=\"low\">\n"
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    body = "".join(f"chr1\t{p}\tv{p}\t{chrom[p - 1]}\t{alt[chrom[p - 1]]}\t.\t{'q10' if p == 300 else 'PASS'}\t.\n"
                   for p in (100, 200, 300, 400, 500))
    (tmp_path / "v.vcf").write_text(header + body)
    vcf = pysam.tabix_index(str(tmp_path / "v.vcf"), preset="vcf", force=True, keep_original=True)
    base = ["vep", str(converted), "--fasta", str(tmp_path / "ref.fa"), "--window", "128", "--no-progress"]
    assert main([*base, "--vcf", vcf, "-o", str(tmp_path / "a.tsv"), "--region", "chr1:150-450", "--pass-only"]) == 0
    assert "scored 2 of 3" in capsys.readouterr().out
    assert [r.split("\t")[2] for r in (tmp_path / "a.tsv").read_text().splitlines()[1:]] == ["v200", "v400"]
    skipped = (tmp_path / "a.skipped.tsv").read_text().splitlines()[1:]
    assert len(skipped) == 1 and skipped[0].startswith("\tchr1\t300\tv300\t") and "filtered: FILTER=q10" in skipped[0]
    assert main([*base, "--vcf", str(tmp_path / "v.vcf"), "-o", str(tmp_path / "b.tsv"), "--region", "chr1:1-9"]) == 1
    assert capsys.readouterr().err.strip() == (f"hyenadna vep: error: {tmp_path}/v.vcf has no tabix index (v.vcf.tbi or "
                                               ".csi) for the region query 'chr1:1-9': bgzip the VCF and index it "
                                               "(`tabix -p vcf v.vcf`)")
    assert main([*base, "--vcf", vcf, "-o", str(tmp_path / "b.tsv"), "--region", "chr1:9-1"]) == 1
    assert capsys.readouterr().err.startswith("hyenadna vep: error: --region 'chr1:9-1': expected CHROM")
    assert not (tmp_path / "b.tsv").exists()


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


def rand_dna(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(n))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (temporaries included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_command_writes_onto_one_of_its_inputs(converted, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(converted, model)
    write_fasta(tmp_path / "in.fa", [("a", "ACGTACGT"), ("b", "GGCCA")])
    shutil.copy(tmp_path / "in.fa", tmp_path / "x.ids.txt")
    (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\tC\n")
    shutil.copy(tmp_path / "v.vcf", tmp_path / "out.skipped.tsv")
    before = snapshot(tmp_path)
    m, t = str(model), str(tmp_path)
    cases = [
        (["score", m, f"{t}/in.fa", "-o", f"{t}/in.fa"], r"-o \S*in.fa is the same file as the input INPUT "),
        (["score", m, f"{t}/in.fa", "-o", f"{m}/config.json"], r"-o \S*config.json is the same file as the input "
                                                             r"MODEL's config.json "),
        (["embed", m, f"{t}/x.ids.txt", "--format", "fasta", "-o", f"{t}/x.npy"],
         r"the ids file of -o \S*x.ids.txt is the same file as the input INPUT "),
        (["embed", m, f"{t}/in.fa", "-o", m], r"shard folder \S*model is not empty \(it holds config.json, "),
        (["vep", m, "--vcf", f"{t}/v.vcf", "--fasta", f"{t}/in.fa", "-o", f"{t}/v.vcf"],
         r"-o \S*v.vcf is the same file as the input --vcf "),
        (["vep", m, "--vcf", f"{t}/out.skipped.tsv", "--fasta", f"{t}/in.fa", "-o", f"{t}/out.tsv"],
         r"the skipped-records file of -o \S*out.skipped.tsv is the same file as the input --vcf "),
        (["convert", m, m], r"DST \S*model is the same file as the input SRC "),
        (["convert", f"{m}/model.safetensors", m], r"DST \S*model holds the input SRC \S*model.safetensors; "),
    ]
    for argv, message in cases:
        assert main(argv + ([] if argv[0] == "convert" else ["--no-progress"])) == 1, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and re.search(message, err), (argv, err)
    assert snapshot(tmp_path) == before  # nothing written, nothing created


def _small_file_limit() -> None:
    """In the child: files may not grow past 2000 bytes; a write past it fails with EFBIG (no SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


@pytest.mark.parametrize("command", ["score", "embed-npy", "embed-shards", "vep", "convert"])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_output(release, converted, tmp_path,
                                                                               command) -> None:
    rng = random.Random(5)
    write_fasta(tmp_path / "in.fa", [(f"r{i}", rand_dna(rng, 50)) for i in range(200)])
    chrom = rand_dna(rng, 400)
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    Genome(tmp_path / "ref.fa")  # its .fai index exists before the run
    (tmp_path / "v.vcf").write_text("".join(f"chr1\t{p}\t.\t{chrom[p - 1]}\t{'C' if chrom[p - 1] == 'A' else 'A'}\n"
                                            for p in range(70, 330)))
    m, t = str(converted), str(tmp_path)
    argv, named = {
        "score": (["score", m, f"{t}/in.fa", "-o", f"{t}/s.tsv"], "s.tsv"),
        "embed-npy": (["embed", m, f"{t}/in.fa", "-o", f"{t}/e.npy"], "e.npy"),
        "embed-shards": (["embed", m, f"{t}/in.fa", "-o", f"{t}/shards"], "shards/shard-00000.pt"),
        "vep": (["vep", m, "--vcf", f"{t}/v.vcf", "--fasta", f"{t}/ref.fa", "-o", f"{t}/vep.tsv", "--window", "128"],
                "vep.tsv"),
        "convert": (["convert", str(release[0]), f"{t}/conv"], "conv"),
    }[command]
    for name in ("s.tsv", "e.npy", "e.ids.txt", "vep.tsv", "vep.skipped.tsv"):
        (tmp_path / name).write_text("previous\n")
    (tmp_path / "shards").mkdir()  # an empty shard folder is filled
    shutil.copytree(converted, tmp_path / "conv")  # an earlier conversion is replaced
    before = snapshot(tmp_path)
    res = subprocess.run([sys.executable, "-m", "hyenadna.cli", *argv] + (["--no-progress"] * (command != "convert")),
                         cwd=REPO, preexec_fn=_small_file_limit, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == f"hyenadna {argv[0]}: error: {tmp_path / named}: File too large", res.stderr
    assert "Traceback" not in res.stderr
    assert snapshot(tmp_path) == before  # the previous outputs as they were, no temporary left
    assert list((tmp_path / "shards").iterdir()) == []


def test_a_run_that_produced_nothing_exits_1_with_the_reason(converted, tmp_path, capsys) -> None:
    rng = random.Random(6)
    chrom = rand_dna(rng, 400)
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}
    (tmp_path / "v.vcf").write_text(f"chr1\t200\tbadref\t{wrong[chrom[199]]}\t{chrom[199]}\nchr1\t100\tdel\tAC\tA\n")
    m, t = str(converted), str(tmp_path)
    assert main(["vep", m, "--vcf", f"{t}/v.vcf", "--fasta", f"{t}/ref.fa", "-o", f"{t}/vep.tsv", "--window", "128",
                 "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        f"hyenadna vep: error: scored 0 of 2 VCF alleles/records (REF mismatch: 1, not an SNV: 1); {t}/vep.tsv not "
        f"written, the reason for each record is in {t}/vep.skipped.tsv\n")
    assert not (tmp_path / "vep.tsv").exists()
    assert [r.split("\t")[3] for r in (tmp_path / "vep.skipped.tsv").read_text().splitlines()] == ["id", "badref", "del"]

    write_fasta(tmp_path / "in.fa", [("a", "ACGTACGT")])
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-00000.pt").write_bytes(b"an earlier run")
    assert main(["embed", m, f"{t}/in.fa", "-o", f"{t}/shards", "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        f"hyenadna embed: error: shard folder {t}/shards is not empty (it holds shard-00000.pt); embed into a new "
        "or empty folder, so that earlier shards do not mix with the new ones\n")
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["shard-00000.pt"]
    for bad in ("0", "-2", "1.5", "many"):
        with pytest.raises(SystemExit) as info:
            main(["embed", m, f"{t}/in.fa", "-o", f"{t}/new", "--shard-size", bad])
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"hyenadna embed: error: argument --shard-size: must be an integer >= 1, got {bad!r}")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv, status, message", [
    (["embed", "{m}", "{t}/in.txt", "-o", "{t}/e.npy"], 1,
     "INPUT {t}/in.txt: cannot tell the format from the name; pass --format fasta, csv or bed"),
    (["embed", "{m}", "{t}/x.bed", "-o", "{t}/e.npy"], 1,
     "INPUT {t}/x.bed is BED: pass the reference FASTA of its intervals with --fasta"),
    (["embed", "{m}", "{t}/in.fa", "-o", "{t}/e.npy", "--batch-size", "0"], 2,
     "argument --batch-size: must be an integer >= 1, got '0'"),
    (["embed", "{m}", "{t}/in.fa", "-o", "{t}/e.npy", "--device", "gpu0"], 1,
     "--device gpu0: not a device; use cpu, cuda, cuda:N or auto"),
    (["score", "{m}", "{t}/in.fa", "-o", "{t}/"], 1, "-o {t}/ is a folder; give the name of the file to write"),
    (["score", "{m}", "{t}/in.fa", "-o", "{t}/no/s.tsv"], 1, "-o {t}/no/s.tsv: the folder {t}/no does not exist"),
    (["vep", "{m}", "--vcf", "{t}/v.vcf", "--fasta", "{t}/in.fa", "-o", "{t}/o.tsv", "--window", "300"], 1,
     "--window must be in [2, 258] (the model's l_max), got 300"),
    (["generate", "{m}", "--prompt", "ACGTAC", "--max-new-tokens", "253"], 1,
     "--prompt (6 bases) + --max-new-tokens (253) = 259 exceeds the model's l_max=258"),
    (["generate", "{m}", "--prompt", "AC>T"], 1, "--prompt: invalid character '>' at position 2; a DNA sequence"),
    (["generate", "{m}", "--prompt", ""], 1, "--prompt is empty; give at least one base"),
    (["generate", "{m}", "--prompt", "ACGT", "--top-k", "0"], 2, "argument --top-k: must be an integer >= 1, got '0'"),
    (["generate", "{m}", "--prompt", "ACGT", "--top-p", "1.5"], 2,
     "argument --top-p: must be a number in (0, 1], got '1.5'"),
    (["generate", "{m}", "--prompt", "ACGT", "--temperature", "0"], 2,
     "argument --temperature: must be a number > 0 (use --top-k 1 for greedy decoding), got '0'"),
    (["generate", "{m}", "--prompt", "ACGT", "--num-samples", "0"], 2,
     "argument --num-samples: must be an integer >= 1, got '0'"),
    (["generate", "{m}", "--prompt", "ACGT", "--max-new-tokens", "-1"], 2,
     "argument --max-new-tokens: must be an integer >= 0, got '-1'"),
    (["generate", "{m}", "--prompt", "ACGT", "--seed", str(2**64)], 2,
     f"argument --seed: must be an integer from -2**63 to 2**64 - 1, got '{2**64}'"),
])
def test_cli_messages_name_the_flags(converted, tmp_path, capsys, argv, status, message) -> None:
    t = str(tmp_path)
    write_fasta(tmp_path / "in.fa", [("a", "ACGTACGT")])
    shutil.copy(tmp_path / "in.fa", tmp_path / "in.txt")
    (tmp_path / "x.bed").write_text("chr1\t0\t4\n")
    (tmp_path / "v.vcf").write_text("a\t2\t.\tC\tA\n")
    argv = [a.format(m=converted, t=t) for a in argv]
    if status == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    else:
        assert main(argv) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"hyenadna {argv[0]}: error: " + message.format(t=t))


def test_a_damaged_gzip_input_is_one_line_naming_the_file(converted, tmp_path, capsys) -> None:
    rng = random.Random(7)
    chrom = rand_dna(rng, 400_000)  # several BGZF blocks
    with open(tmp_path / "ref.fa.gz", "wb") as f, BgzfWriter(f) as writer:
        writer.write(f">chr1\n{chrom}\n".encode())
    data = (tmp_path / "ref.fa.gz").read_bytes()
    (tmp_path / "cut.fa.gz").write_bytes(data[: len(data) // 2])
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom[:400])])
    fasta = gzip.compress("".join(f">r{i}\n{rand_dna(rng, 100)}\n" for i in range(2000)).encode())
    (tmp_path / "in.fa.gz").write_bytes(fasta[: len(fasta) // 2])
    vcf = gzip.compress("".join(f"chr1\t{p}\t.\t{chrom[p - 1]}\tN\n" for p in range(100, 300)).encode() * 50)
    (tmp_path / "v.vcf.gz").write_bytes(vcf[: len(vcf) // 2])
    (tmp_path / "x.bed").write_text("chr1\t0\t10\n")
    (tmp_path / "ok.vcf").write_text(f"chr1\t200\t.\t{chrom[199]}\tN\n")
    m, t = str(converted), str(tmp_path)
    cut_gzip = "truncated or corrupt gzip file (Compressed file ended before the end-of-stream marker was reached)"
    cut_bgzf = f"FASTA file {t}/cut.fa.gz is a truncated or corrupt gzip/BGZF file ("
    cases = [
        (["embed", m, f"{t}/in.fa.gz", "-o", f"{t}/e.npy"], f"{t}/in.fa.gz: {cut_gzip}"),
        (["score", m, f"{t}/in.fa.gz", "-o", f"{t}/s.tsv"], f"{t}/in.fa.gz: {cut_gzip}"),
        (["vep", m, "--vcf", f"{t}/v.vcf.gz", "--fasta", f"{t}/ref.fa", "-o", f"{t}/o.tsv", "--window", "128"],
         f"{t}/v.vcf.gz: {cut_gzip}"),
        (["vep", m, "--vcf", f"{t}/ok.vcf", "--fasta", f"{t}/cut.fa.gz", "-o", f"{t}/o.tsv", "--window", "128"],
         cut_bgzf),
        (["embed", m, f"{t}/x.bed", "--fasta", f"{t}/cut.fa.gz", "-o", f"{t}/e.npy"], cut_bgzf),
    ]
    for argv, message in cases:
        assert main(argv + ["--no-progress"]) == 1, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(f"hyenadna {argv[0]}: error: {message}"), (argv, err)
    assert not any((tmp_path / name).exists() for name in ("e.npy", "s.tsv", "o.tsv", "o.skipped.tsv"))


def test_version_comes_from_the_package_metadata(capsys) -> None:
    import importlib.metadata

    import hyenadna

    assert hyenadna.__version__ == importlib.metadata.version("hyenadna")
    # pyproject.toml is the one place the version is written; the installed metadata is its copy
    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert hyenadna.__version__ == declared
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hyenadna {declared}"
    run = subprocess.run([sys.executable, "-m", "hyenadna.cli", "--version"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"hyenadna {declared}"
