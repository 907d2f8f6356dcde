"""Download and prepare the hg38 pretraining set of HyenaDNA (needs internet, run once).

Steps, each skipped when its output already exists (rerun the script to resume):

1. download the UCSC hg38 FASTA (``hg38.fa.gz``, ~0.95 GB, plain gzip); an interrupted
   download continues where it stopped;
2. download the Basenji2/Enformer interval split ``sequences_human.bed`` that the official
   HyenaDNA README names (~38k intervals of 131 kb with a train/valid/test column);
3. convert the FASTA once to BGZF (``hg38.fa.bgzf.gz``, random access through pyfaidx);
4. write ``human-sequences.bed``: split names made canonical, rows on chromosomes absent
   from the FASTA dropped, and train rows clipped wherever they touch a held-out row, so
   that no held-out base is ever trained on.

    python data/prepare_hg38.py --out-dir data/hg38

It ends by printing the genome source to pretrain on (FASTA and BED paths).

The official code reads ``hg38.ml.fa.gz`` from the same bucket as the BED; pass
``--fasta-url https://storage.googleapis.com/basenji_barnyard2/hg38.ml.fa.gz`` to use it.
Disk: about 2 GB (the download and its BGZF copy; the download may be deleted afterwards).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from hyenadna.genome import (
    Genome,
    Interval,
    check_intervals,
    clip_to_held_out,
    read_bed,
    write_bed,
)

FASTA_URL = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz"
BED_URL = "https://storage.googleapis.com/basenji_barnyard2/sequences_human.bed"
_CHUNK = 1 << 20


def log(message: str) -> None:
    """Progress message to stderr."""
    print(f"[prepare_hg38] {message}", file=sys.stderr, flush=True)


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest``, resuming a previous partial download (``dest.part``)."""
    if dest.exists():
        log(f"{dest} exists, skipping download")
        return
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if have and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part file is complete
            part.rename(dest)
            return
        raise RuntimeError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(f"cannot download {url}: {err}; check the network and rerun") from None
    with response:
        resumed = getattr(response, "status", 200) == 206
        if have and not resumed:
            log(f"{url} does not support resuming; starting {dest.name} again")
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        log(f"downloading {url} -> {dest}" + (f" ({total / 1e6:,.0f} MB)" if total else ""))
        done, last = have, time.monotonic()
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    share = f" ({100 * done / total:.1f}%)" if total else ""
                    log(f"  {done / 1e6:,.0f} MB{share}")
    if total is not None and done != total:
        raise RuntimeError(
            f"download of {url} stopped at {done} of {total} bytes; rerun to resume"
        )
    part.rename(dest)
    log(f"downloaded {dest} ({done / 1e6:,.1f} MB)")


def normalise_bed(
    intervals: Sequence[Interval], chrom_lengths: Mapping[str, int], fasta: str | Path = "the FASTA"
) -> tuple[list[Interval], dict[str, int]]:
    """Drop rows on absent chromosomes, clip train rows off held-out rows, and check the rest.

    Returns the intervals and counts: ``dropped_rows`` (absent chromosome), ``clipped_rows``
    (changed by clipping), and the number of merged intervals per split.
    """
    present = [iv for iv in intervals if iv.chrom in chrom_lengths]
    clipped, changed = clip_to_held_out(present)
    check_intervals(chrom_lengths, clipped, fasta=fasta)
    counts = Counter(iv.split for iv in clipped)
    summary = {"dropped_rows": len(intervals) - len(present), "clipped_rows": changed}
    summary.update({split: counts.get(split, 0) for split in ("train", "valid", "test")})
    return clipped, summary


def main(argv: Sequence[str] | None = None) -> None:
    """Run the download / convert / split steps; each is skipped if already done."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--out-dir", type=Path, default=Path("data/hg38"))
    parser.add_argument("--fasta-url", default=FASTA_URL, help="plain-gzip or BGZF hg38 FASTA")
    parser.add_argument("--bed-url", default=BED_URL, help="BED with chrom, start, end, split")
    args = parser.parse_args(argv)

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    fasta_gz = out / Path(args.fasta_url).name
    raw_bed = out / "sequences_human.bed"
    bed = out / "human-sequences.bed"

    download(args.fasta_url, fasta_gz)
    download(args.bed_url, raw_bed)
    genome = Genome(fasta_gz)  # converts plain gzip to BGZF once and indexes it
    log(f"FASTA ready: {genome.readable_path} ({len(genome.chrom_lengths)} sequences)")
    if bed.exists():
        log(f"{bed} exists, skipping")
    else:
        intervals, summary = normalise_bed(
            read_bed(raw_bed), genome.chrom_lengths, fasta=genome.readable_path
        )
        tmp = bed.with_name(bed.name + ".part")
        write_bed(tmp, intervals)
        tmp.rename(bed)
        log(f"wrote {bed}: {summary}")
    print(
        "ready; pretrain with the genome source\n"
        f"  {{name: hg38, fasta: {genome.readable_path}, bed: {bed}}}"
    )


if __name__ == "__main__":
    main()
