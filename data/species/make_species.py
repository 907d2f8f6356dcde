"""Rebuild the shipped species-classification task ``data/species/{train,valid,test}.fa.gz``.

The HyenaDNA paper's species task: name the genome a DNA fragment comes from. Five genomes
(the Debian example-data files described in ``data/species/README.md``); each genome region is
cut by coordinates into train / valid / test ranges (60 / 15 / 25 %), and fragments are drawn
without overlap from a tiling of each range, so no base appears in two splits. Fragments with
any N are skipped. Records are named ``<seqname>:<start>-<end>|<species>`` (0-based, half-open);
the label is the text after the last ``|``. This script documents how the files were made; the
project never reads the source genomes at run time.

    python data/species/make_species.py --source-dir /path/to/genomes --out data/species
"""

from __future__ import annotations

import argparse
import gzip
import random
from pathlib import Path

# species label -> (file, record index, region start, region end or None for the whole record)
# Human: GRCh37 chrX 40-42 Mb, away from the 20-28 Mb slice used for pretraining (data/).
GENOMES: dict[str, tuple[str, int, int, int | None]] = {
    "human": ("human_chrX_GRCh37_first70Mb.fa.gz", 0, 40_000_000, 42_000_000),
    "ecoli": ("ecoli_K12_MG1655.fa.gz", 0, 0, None),
    "vcholerae": ("vcholerae_O395.fa.gz", 0, 0, None),
    "saureus": ("saureus_N315.fa.gz", 0, 0, None),
    "pfalciparum": ("pfalciparum.fa.gz", 10, 0, None),  # MAL11, a 2 Mb chromosome
}
SPLIT_FRACTIONS = {"train": (0.0, 0.60), "valid": (0.60, 0.75), "test": (0.75, 1.0)}
PER_SPECIES = {"train": 400, "valid": 100, "test": 200}


def read_record(path: Path, index: int) -> tuple[str, str]:
    """(name, upper-case sequence) of the index-th record of a (gzipped) FASTA file."""
    name, chunks, current = None, [], -1
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                current += 1
                if current > index:
                    break
                if current == index:
                    name = line[1:].split()[0]
            elif current == index:
                chunks.append(line.strip())
    if name is None:
        raise ValueError(f"{path} has no record {index}")
    return name, "".join(chunks).upper()


def write_gzip(path: Path, text: str) -> None:
    """Gzip ``text`` to ``path``; mtime=0 keeps the output byte-identical between runs."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode())


def main() -> None:
    """Write the three split FASTA files and the unlabelled pretraining corpus of the train ranges."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("data/species"))
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    records: dict[str, list[str]] = {split: [] for split in SPLIT_FRACTIONS}
    lm_records: list[str] = []  # the whole train range of each genome, unlabelled, for pretraining
    lm_bed: list[str] = []
    for species, (file, index, region_start, region_end) in GENOMES.items():
        name, seq = read_record(args.source_dir / file, index)
        name = "chrX" if species == "human" else name.split("|")[3] if "|" in name else name
        end = len(seq) if region_end is None else region_end
        span = end - region_start
        for split, (lo, hi) in SPLIT_FRACTIONS.items():
            a, b = region_start + int(lo * span), region_start + int(hi * span)
            if split == "train":
                lines = "\n".join(seq[i:min(i + 80, b)] for i in range(a, b, 80))
                lm_records.append(f">{species} {name}:{a}-{b}\n{lines}\n")
                lm_bed.append(f"{species}\t0\t{b - a}\ttrain\n")
            starts = [s for s in range(a, b - args.length + 1, args.length)
                      if "N" not in seq[s:s + args.length]]
            chosen = sorted(rng.sample(starts, PER_SPECIES[split]))
            for s in chosen:
                records[split].append(f">{name}:{s}-{s + args.length}|{species}\n{seq[s:s + args.length]}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrain").mkdir(exist_ok=True)
    write_gzip(args.out / "pretrain" / "genomes.fa.gz", "".join(lm_records))
    (args.out / "pretrain" / "genomes.bed").write_text("".join(lm_bed))
    print(f"pretrain/genomes.fa.gz: {sum(len(r) for r in lm_records) / 1e6:.1f} Mb of unlabelled train-range sequence")
    for split, recs in records.items():
        rng.shuffle(recs)
        write_gzip(args.out / f"{split}.fa.gz", "".join(recs))
        print(f"{split}: {len(recs)} fragments")


if __name__ == "__main__":
    main()
