"""Genome access, BGZF writing, BED intervals and coordinate splits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from hyenadna.genome import (
    BgzfWriter,
    Genome,
    Interval,
    check_intervals,
    clip_to_held_out,
    find_cross_split_overlap,
    is_bgzf,
    merge_intervals,
    read_bed,
    split_by_coordinates,
)
from hyenadna.genome import write_bgzf as open_bgzf

DATA = Path(__file__).resolve().parent.parent / "data"


def random_dna(seed: int, n: int) -> str:
    """A reproducible random ACGT sequence."""
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def fasta_text(records: dict[str, str], width: int = 60) -> str:
    """FASTA text with fixed-width lines."""
    out = []
    for name, seq in records.items():
        out.append(f">{name} description\n")
        out.extend(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    return "".join(out)


@pytest.fixture
def records() -> dict[str, str]:
    return {"chr1": random_dna(1, 5000), "chr2": random_dna(2, 777).lower(), "chrM": random_dna(3, 61)}


def write_bgzf(path: Path, text: str) -> Path:
    with open(path, "wb") as f, BgzfWriter(f) as writer:
        writer.write(text.encode())
    return path


# ------------------------------------------------------------------------- BGZF


def test_bgzf_writer_is_valid_gzip_with_bgzf_blocks(tmp_path: Path) -> None:
    data = random_dna(0, 200_000).encode()  # several 0xFF00-byte blocks
    path = tmp_path / "x.gz"
    with open(path, "wb") as f, BgzfWriter(f) as writer:
        for i in range(0, len(data), 7777):
            writer.write(data[i : i + 7777])
    assert gzip.decompress(path.read_bytes()) == data
    assert is_bgzf(path)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(gzip.compress(data))
    assert not is_bgzf(plain)


def test_write_bgzf_is_read_by_biopython_and_htslib_and_is_atomic(tmp_path: Path) -> None:
    """genome.write_bgzf (Biopython's writer) gives a file that Bio.bgzf, htslib (pysam: BGZF with its EOF
    block, random access by a .fai/.gzi index) and gzip read back; a failed write leaves nothing."""
    import pysam
    from Bio import bgzf

    seq = random_dna(5, 150_000)  # several 64 KiB blocks
    path = tmp_path / "g.fa.gz"
    with open_bgzf(path) as writer:
        writer.write(fasta_text({"chr1": seq}).encode())
    assert gzip.decompress(path.read_bytes()) == fasta_text({"chr1": seq}).encode()
    text = fasta_text({"chr1": seq}).encode()
    with bgzf.BgzfReader(str(path), "rb") as f:
        assert f.read(len(text) + 1) == text
    with open(path, "rb") as f:
        blocks = list(bgzf.BgzfBlocks(f))  # (start, length, data start, data length) per block
    assert len(blocks) >= 4 and blocks[-1][3] == 0  # the empty EOF marker block ends the file
    with pysam.FastaFile(str(path)) as fa:  # htslib refuses plain gzip here: only BGZF opens
        assert fa.fetch("chr1", 70_000, 70_100) == seq[70_000:70_100]
    with pytest.raises(RuntimeError, match="half-way"):
        with open_bgzf(tmp_path / "bad.fa.gz") as writer:
            writer.write(b">x\nACGT\n")
            raise RuntimeError("failed half-way")
    assert not any(p.name.startswith((".bad", "bad")) for p in tmp_path.iterdir())


# ------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", ["plain", "bgzf"])
def test_fetch_matches_records(tmp_path: Path, records: dict[str, str], kind: str) -> None:
    text = fasta_text(records)
    if kind == "plain":
        path = tmp_path / "g.fa"
        path.write_text(text)
    else:
        path = write_bgzf(tmp_path / "g.fa.gz", text)
    genome = Genome(path)
    assert genome.chrom_lengths == {name: len(seq) for name, seq in records.items()}
    assert genome.readable_path == path  # read directly, nothing converted
    rng = np.random.default_rng(0)
    for name, seq in records.items():
        for _ in range(20):
            start = int(rng.integers(len(seq)))
            end = int(rng.integers(start, len(seq) + 1))
            assert genome.fetch(name, start, end) == seq[start:end]  # case kept (chr2 lowercase)
    assert genome.fetch("chr1", 0, 0) == ""


def test_plain_gzip_is_converted_once(tmp_path: Path, records: dict[str, str],
                                      capfd: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "hg.fa.gz"
    src.write_bytes(gzip.compress(fasta_text(records).encode()))
    cache = tmp_path / "cache"
    genome = Genome(src, cache_dir=cache)
    assert "converting it once to BGZF" in capfd.readouterr().err
    converted = genome.readable_path
    assert converted.parent == cache and is_bgzf(converted)
    assert genome.fetch("chr1", 100, 200) == records["chr1"][100:200]
    mtime = converted.stat().st_mtime_ns

    again = Genome(src, cache_dir=cache)
    assert "converting" not in capfd.readouterr().err
    assert again.readable_path == converted and converted.stat().st_mtime_ns == mtime
    assert again.fetch("chrM", 0, 61) == records["chrM"]


def test_plain_gzip_default_cache_is_next_to_file(tmp_path: Path, records: dict[str, str]) -> None:
    src = tmp_path / "hg.fa.gz"
    src.write_bytes(gzip.compress(fasta_text(records).encode()))
    assert Genome(src).readable_path == tmp_path / "hg.fa.bgzf.gz"


def test_unwritable_cache_is_a_clear_error(tmp_path: Path, records: dict[str, str]) -> None:
    src = tmp_path / "hg.fa.gz"
    src.write_bytes(gzip.compress(fasta_text(records).encode()))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # A cache folder below a regular file cannot be created, even by root.
    with pytest.raises(PermissionError, match="hg.fa.gz.*pass cache_dir"):
        Genome(src, cache_dir=blocker / "cache")


def test_genome_survives_pickling(tmp_path: Path, records: dict[str, str]) -> None:
    import pickle

    genome = Genome(write_bgzf(tmp_path / "g.fa.gz", fasta_text(records)))
    genome.fetch("chr1", 0, 10)
    clone = pickle.loads(pickle.dumps(genome))
    assert clone.fetch("chr2", 5, 50) == records["chr2"][5:50]


# ----------------------------------------------------------------- bad FASTA


def test_missing_fasta(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="FASTA file not found: .*nope.fa"):
        Genome(tmp_path / "nope.fa")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ACGT\n>a\nACGT\n", "not a valid FASTA file.*start with a '>name' header"),
        ("", "not a valid FASTA file"),
        ("hello world\n", "not a valid FASTA file"),
        (">a\n>b\nACGT\n", r"empty record\(s\) \['a'\]"),
        (">a\nACGT\n>a\nACGT\n", "duplicate sequence names"),
        (">a\nACGTAC\nAC\nACGTAC\n", "cannot read FASTA file"),
        (">a\nACGT\nACGT\nACGTACGTAA\n>b\nGGGG\n", "lines of unequal length"),
    ],
)
def test_malformed_fasta(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        Genome(path)
    assert "bad.fa" in str(info.value)
    assert "Traceback" not in str(info.value)
    # A failed open must not leave an index that a later open would trust.
    if "empty record" not in message:
        assert not (tmp_path / "bad.fa.fai").exists()


def test_binary_file_is_not_fasta(tmp_path: Path) -> None:
    path = tmp_path / "img.fa"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x01\x02")
    with pytest.raises(ValueError, match="img.fa is not a FASTA file"):
        Genome(path)


@pytest.mark.parametrize("keep", ["half", "all but the EOF block", "30 bytes"])
def test_truncated_bgzf_is_one_line_naming_the_file(tmp_path: Path, keep: str) -> None:
    data = write_bgzf(tmp_path / "full.fa.gz", fasta_text({"chr1": random_dna(4, 200_000)})).read_bytes()
    cut = {"half": len(data) // 2, "all but the EOF block": len(data) - 28, "30 bytes": 30}[keep]
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"^FASTA file .*cut\.fa\.gz is a truncated or corrupt gzip/BGZF file \("):
        Genome(path)


def test_truncated_plain_gzip_fails_its_conversion_naming_the_file(tmp_path: Path) -> None:
    data = gzip.compress(fasta_text({"chr1": random_dna(5, 50_000)}).encode())
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^FASTA file .*cut\.fa\.gz is a truncated or corrupt gzip file "
                                         r"\(.*\); cannot convert it to BGZF$"):
        Genome(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.fa.gz"]  # no partial BGZF copy


def test_corrupt_bgzf_block_met_by_a_fetch_names_the_file(tmp_path: Path) -> None:
    seq = random_dna(6, 200_000)
    path = write_bgzf(tmp_path / "g.fa.gz", fasta_text({"chr1": seq}))
    Genome(path)  # writes the .fai/.gzi index of the intact file
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 100] = bytes(100)
    path.write_bytes(data)
    for index in tmp_path.glob("g.fa.gz.*"):
        os.utime(index)  # still newer than the file: pyfaidx trusts it and opens without reading the blocks
    genome = Genome(path)
    assert genome.fetch("chr1", 0, 10) == seq[:10]
    with pytest.raises(ValueError, match=r"^cannot read chr1:0-200000: FASTA file .*g\.fa\.gz is a truncated "
                                         r"or corrupt gzip/BGZF file \(RuntimeError: Decompressed"):
        genome.fetch("chr1", 0, 200_000)


def test_gz_suffix_without_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.fa.gz"
    path.write_text(">a\nACGT\n")
    with pytest.raises(ValueError, match="x.fa.gz is named like a gzip file"):
        Genome(path)


def test_fetch_errors_name_chrom_and_coordinates(tmp_path: Path, records: dict[str, str]) -> None:
    path = tmp_path / "g.fa"
    path.write_text(fasta_text(records))
    genome = Genome(path)
    with pytest.raises(ValueError, match="chromosome 'chr9' is not in FASTA .*g.fa.*chr1, chr2"):
        genome.fetch("chr9", 0, 10)
    with pytest.raises(ValueError, match="chr1:4990-5010.*<= 5000"):
        genome.fetch("chr1", 4990, 5010)
    with pytest.raises(ValueError, match="chr1:-1-10"):
        genome.fetch("chr1", -1, 10)


# ---------------------------------------------------------------------- BED


def test_read_bed(tmp_path: Path) -> None:
    bed = tmp_path / "s.bed"
    bed.write_text("# comment\ntrack name=x\nchr1\t0\t100\ttrain\nchr1\t100\t150\tval\n\nchr2\t5\t9\tTEST\textra\n")
    assert read_bed(bed) == [
        Interval("chr1", 0, 100, "train"),
        Interval("chr1", 100, 150, "valid"),
        Interval("chr2", 5, 9, "test"),
    ]
    assert read_bed(bed)[2].source == f"{bed}:6"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("chr1\t0\t100", "s.bed:2: expected 4 tab-separated columns"),
        ("chr1\tzero\t100\ttrain", "s.bed:2: start and end must be integers"),
        ("chr1\t100\t100\ttrain", r"s.bed:2: need 0 <= start < end"),
        ("chr1\t-5\t100\ttrain", r"s.bed:2: need 0 <= start < end"),
        ("chr1\t0\t100\tholdout", "s.bed:2: unknown split 'holdout'"),
    ],
)
def test_bad_bed_lines(tmp_path: Path, line: str, message: str) -> None:
    bed = tmp_path / "s.bed"
    bed.write_text(f"chr1\t0\t10\ttrain\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_bed(bed)


def test_missing_and_empty_bed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="BED file not found"):
        read_bed(tmp_path / "none.bed")
    (tmp_path / "empty.bed").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.bed has no intervals"):
        read_bed(tmp_path / "empty.bed")


def test_check_intervals_errors_name_bed_line_and_fasta(tmp_path: Path) -> None:
    lengths = {"chr1": 1000}
    bed = tmp_path / "s.bed"
    bed.write_text("chr1\t0\t500\ttrain\nchr7\t0\t10\tvalid\n")
    with pytest.raises(ValueError, match=r"s.bed:2 \(chr7:0-10\): chromosome 'chr7' is not in FASTA g.fa"):
        check_intervals(lengths, read_bed(bed), fasta="g.fa")
    bed.write_text("chr1\t0\t500\ttrain\nchr1\t900\t1001\tvalid\n")
    with pytest.raises(ValueError, match=r"s.bed:2 .*ends at 1001, past the end of chr1 \(length 1000\)"):
        check_intervals(lengths, read_bed(bed), fasta="g.fa")
    bed.write_text("chr1\t0\t500\ttrain\nchr1\t499\t600\tvalid\n")
    with pytest.raises(ValueError, match=r"'train' interval .*s.bed:1.* overlaps split 'valid'.*s.bed:2"):
        check_intervals(lengths, read_bed(bed), fasta="g.fa")
    bed.write_text("chr1\t0\t500\ttrain\nchr1\t400\t600\ttrain\nchr1\t600\t700\tvalid\n")
    check_intervals(lengths, read_bed(bed), fasta="g.fa")  # same-split overlap and touching are fine


def covered(intervals: list[Interval], size: int = 10_000) -> dict[str, np.ndarray]:
    """Per split, a boolean mask of covered positions (single-chromosome intervals)."""
    masks: dict[str, np.ndarray] = {}
    for iv in intervals:
        mask = masks.setdefault(iv.split, np.zeros(size, dtype=bool))
        mask[iv.start : iv.end] = True
    return masks


def test_overlap_detection_agrees_with_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        intervals = []
        for _ in range(int(rng.integers(2, 8))):
            start = int(rng.integers(0, 100))
            intervals.append(Interval("chr1", start, start + int(rng.integers(1, 30)),
                                      str(rng.choice(["train", "valid", "test"]))))
        masks = covered(intervals)
        splits = list(masks)
        brute = any((masks[a] & masks[b]).any() for a in splits for b in splits if a < b)
        assert (find_cross_split_overlap(intervals) is not None) == brute


def test_merge_and_clip_to_held_out() -> None:
    intervals = [
        Interval("chr1", 0, 100, "train"),
        Interval("chr1", 50, 300, "train"),
        Interval("chr1", 120, 180, "valid"),
        Interval("chr1", 170, 200, "test"),
        Interval("chr1", 400, 500, "valid"),
    ]
    merged = merge_intervals(intervals)
    assert Interval("chr1", 0, 300, "train") in merged
    clipped, changed = clip_to_held_out(intervals)
    assert find_cross_split_overlap(clipped) is None
    assert changed == 2  # the merged train interval and the valid one touching the test one
    masks_before, masks_after = covered(intervals), covered(clipped)
    # Held-out bases stay (test wins over valid), train loses exactly the held-out bases.
    assert np.array_equal(masks_after["test"], masks_before["test"])
    assert np.array_equal(masks_after["valid"], masks_before["valid"] & ~masks_before["test"])
    held = masks_before["valid"] | masks_before["test"]
    assert np.array_equal(masks_after["train"], masks_before["train"] & ~held)


@pytest.mark.parametrize(("valid", "test"), [(0.1, 0.1), (0.05, 0.0), (0.0, 0.0), (0.3, 0.2)])
def test_split_by_coordinates_partitions_each_chromosome(valid: float, test: float) -> None:
    lengths = {"chr1": 10_000, "chr2": 1234, "tiny": 3}
    intervals = split_by_coordinates(lengths, valid, test)
    assert find_cross_split_overlap(intervals) is None
    for chrom, length in lengths.items():
        mine = sorted((iv for iv in intervals if iv.chrom == chrom), key=lambda iv: iv.start)
        # Contiguous, in order train | valid | test, covering every base exactly once.
        assert mine[0].start == 0 and mine[-1].end == length
        assert all(a.end == b.start for a, b in zip(mine, mine[1:]))
        assert [iv.split for iv in mine] == sorted((iv.split for iv in mine),
                                                   key=["train", "valid", "test"].index)
    chr1 = {iv.split: len(iv) for iv in intervals if iv.chrom == "chr1"}
    assert chr1.get("valid", 0) == round(10_000 * valid) and chr1.get("test", 0) == round(10_000 * test)


def test_split_by_coordinates_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="valid_fraction must be in"):
        split_by_coordinates({"a": 10}, 1.5, 0.0)
    with pytest.raises(ValueError, match="something is left to train on"):
        split_by_coordinates({"a": 10}, 0.5, 0.5)


# ----------------------------------------------------------- shipped data


def test_shipped_human_slice_and_splits() -> None:
    genome = Genome(DATA / "human_chrX_8mb.fa.gz")
    assert genome.chrom_lengths == {"chrX": 8_000_000}
    assert is_bgzf(DATA / "human_chrX_8mb.fa.gz")
    assert set(genome.fetch("chrX", 3_000_000, 3_010_000)) <= set("ACGT")
    for name, train_bases in (("human_chrX_small.bed", 2_000_000), ("human_chrX_8mb.bed", 7_000_000)):
        intervals = read_bed(DATA / name)
        check_intervals(genome.chrom_lengths, intervals, fasta="human_chrX_8mb.fa.gz")
        assert {iv.split for iv in intervals} == {"train", "valid", "test"}
        assert sum(len(iv) for iv in intervals if iv.split == "train") == train_bases
    # The small run's held-out ranges lie inside the 8 Mb run's held-out ranges.
    small = covered(read_bed(DATA / "human_chrX_small.bed"), size=8_000_000)
    large = covered(read_bed(DATA / "human_chrX_8mb.bed"), size=8_000_000)
    for split in ("valid", "test"):
        assert not (small[split] & ~large[split]).any()


def test_index_goes_to_cache_dir_when_folder_is_read_only(tmp_path: Path, records: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_bgzf(tmp_path / "g.fa.gz", fasta_text(records))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(PermissionError, match="g.fa.gz: folder .* is not writable; pass cache_dir"):
        Genome(path)
    genome = Genome(path, cache_dir=tmp_path / "idx")
    assert (tmp_path / "idx" / "g.fa.gz.fai").exists()
    assert genome.fetch("chr1", 10, 20) == records["chr1"][10:20]


# ------------------------------------------------------- data/prepare_hg38.py


def load_prepare_script():
    """Import data/prepare_hg38.py (a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_hg38", DATA / "prepare_hg38.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_hg38_offline_pipeline(tmp_path: Path, records: dict[str, str],
                                       capfd: pytest.CaptureFixture[str]) -> None:
    prep = load_prepare_script()
    src = tmp_path / "src"
    src.mkdir()
    (src / "hg38.fa.gz").write_bytes(gzip.compress(fasta_text(records).encode()))
    # Basenji-style rows: a train row overlapping a valid row, a 'val' alias, an absent chrom.
    (src / "sequences_human.bed").write_text(
        "chr1\t0\t3000\ttrain\nchr1\t2500\t4000\tval\nchr1\t4000\t5000\ttest\nchr9\t0\t10\ttrain\n"
    )
    out = tmp_path / "hg38"
    args = ["--out-dir", str(out), "--fasta-url", (src / "hg38.fa.gz").as_uri(),
            "--bed-url", (src / "sequences_human.bed").as_uri()]
    prep.main(args)
    err = capfd.readouterr().err
    assert "converting it once to BGZF" in err and "'dropped_rows': 1, 'clipped_rows': 1" in err
    assert is_bgzf(out / "hg38.fa.bgzf.gz")
    intervals = read_bed(out / "human-sequences.bed")
    assert intervals == [
        Interval("chr1", 0, 2500, "train"),
        Interval("chr1", 2500, 4000, "valid"),
        Interval("chr1", 4000, 5000, "test"),
    ]
    prep.main(args)  # every step is done: a rerun only reports
    again = capfd.readouterr().err
    assert "skipping download" in again and "converting" not in again


def test_download_resumes_a_partial_file(tmp_path: Path) -> None:
    import http.server
    import threading

    prep = load_prepare_script()
    payload = random_dna(11, 50_000).encode()
    ranges: list[str | None] = []

    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            ranges.append(self.headers.get("Range"))
            start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            self.wfile.write(payload[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "x.bin"
        (tmp_path / "x.bin.part").write_bytes(payload[:12_345])  # an interrupted download
        prep.download(f"http://127.0.0.1:{server.server_port}/x.bin", dest)
    finally:
        server.shutdown()
    assert ranges == ["bytes=12345-"]
    assert dest.read_bytes() == payload and not (tmp_path / "x.bin.part").exists()


def test_download_failure_is_a_clear_error(tmp_path: Path) -> None:
    prep = load_prepare_script()
    with pytest.raises(RuntimeError, match="cannot download .*missing.fa.gz"):
        prep.download((tmp_path / "missing.fa.gz").as_uri(), tmp_path / "out.fa.gz")


def test_windows_that_end_at_a_bgzf_block_boundary_are_read(tmp_path: Path) -> None:
    """A BGZF FASTA we write is read by pyfaidx at every window that starts or ends near a block
    boundary (with Biopython's 65536-byte blocks a window starting at a block's end failed: in-block
    offset 65536)."""
    from hyenadna.genome import BGZF_BLOCK_SIZE

    seq = random_dna(5, 300_000)
    text = ">chr1\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
    genome = Genome(write_bgzf(tmp_path / "g.fa.gz", text))
    for block in (BGZF_BLOCK_SIZE, 65536):
        for k in range(1, len(text) // block + 1):
            pos = (k * block - 6) * 60 // 61  # the base nearest uncompressed byte k * block
            for x in range(pos - 3, pos + 4):
                assert genome.fetch("chr1", x - 100, x) == seq[x - 100:x]
                assert genome.fetch("chr1", x, x + 100) == seq[x:x + 100]
