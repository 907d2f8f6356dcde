"""Rebuild the shipped human slice ``data/human_chrX_8mb.fa.gz`` from its Debian source.

The source is ``hs37chrXtrunc.fa.gz`` of the Debian package smalt-examples: GRCh37
chromosome X (NC_000023.10), bases 1..70,000,000, plain gzip, one record. This script
records how the slice was cut; the project never reads the source at run time.

    python data/make_human_slice.py --source hs37chrXtrunc.fa.gz --out data/human_chrX_8mb.fa.gz
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from hyenadna.genome import write_bgzf

LINE_WIDTH = 60


def main() -> None:
    """Cut [start, end) of the source record and write it as BGZF FASTA record ``chrX``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="plain-gzip chrX FASTA")
    parser.add_argument("--out", type=Path, default=Path("data/human_chrX_8mb.fa.gz"))
    parser.add_argument("--start", type=int, default=20_000_000, help="0-based, inclusive")
    parser.add_argument("--end", type=int, default=28_000_000, help="0-based, exclusive")
    args = parser.parse_args()

    with gzip.open(args.source, "rb") as f:
        header, _, body = f.read().partition(b"\n")
    if not header.startswith(b">"):
        raise ValueError(f"{args.source} does not start with a FASTA header")
    sequence = body.replace(b"\n", b"")
    if not 0 <= args.start < args.end <= len(sequence):
        raise ValueError(f"need 0 <= start < end <= {len(sequence)}, got {args.start}, {args.end}")
    piece = sequence[args.start : args.end]
    description = f"GRCh37 NC_000023.10 chrX:{args.start + 1}-{args.end} (1-based, inclusive)"
    with write_bgzf(args.out, level=9) as writer:
        writer.write(f">chrX {description}\n".encode())
        for i in range(0, len(piece), LINE_WIDTH):
            writer.write(piece[i : i + LINE_WIDTH] + b"\n")
    n_count = piece.count(b"N")
    print(f"wrote {args.out}: {len(piece):,} bases, {n_count:,} N, {description}")


if __name__ == "__main__":
    main()
