"""Using a pretrained HyenaDNA model: embeddings, sequence scores, variant effects, generation.

Conventions (all follow from the model being causal):

* Batches are padded on the **right** with an attention mask. Position t only sees tokens
  <= t, so right padding leaves every real position exactly as it is without padding; left
  padding would put pad tokens in front of the sequence and change every output. (The
  official tokenizer pads left; that is fine for last-token classification after finetuning
  with it, not for embeddings of a pretrained model.)
* Inputs are the bare nucleotides, no special tokens: the released models were pretrained on
  raw nucleotide windows (reference notes §3).
* A sequence longer than the model's l_max is an error, reported with its name before any
  work starts; the implicit filters are only defined up to l_max.
"""

from __future__ import annotations

import csv
import errno
import io
import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyenadna.files import (
    atomic_outputs,
    atomic_write,
    naming_os_errors,
    open_text,
    read_bed_rows,
    read_fasta,
    table_delimiter,
)
from hyenadna.model import HyenaDNAForCausalLM, HyenaDNAForSequenceClassification, HyenaDNAModel
from hyenadna.tokenizer import CharTokenizer

Record = tuple[str, str]  # (name, sequence)
Pooling = Literal["mean", "last", "none"]
Precision = Literal["fp32", "bf16", "fp16"]

# --------------------------------------------------------------------------------------------
# Reading sequences
# --------------------------------------------------------------------------------------------


def read_fasta_records(path: str | Path) -> Iterator[Record]:
    """Stream (name, sequence) records of a plain, gzip or bgzip FASTA (`hyenadna.files.read_fasta`)."""
    for name, seq, _ in read_fasta(path):
        yield name, seq


def read_csv_sequences(path: str | Path, seq_column: str = "sequence", id_column: str | None = None) -> Iterator[Record]:
    """Stream records of a CSV/TSV (`hyenadna.files.table_delimiter`) with a sequence column."""
    path = Path(path)
    with open_text(path) as f:
        header = f.readline()
        delimiter = table_delimiter(path, header)
        cols = next(csv.reader([header], delimiter=delimiter), [])
        if seq_column not in cols:
            raise ValueError(f"{path}: no column {seq_column!r} in the header {cols}")
        if id_column is not None and id_column not in cols:
            raise ValueError(f"{path}: no column {id_column!r} in the header {cols}")
        reader = csv.DictReader(f, fieldnames=cols, delimiter=delimiter)
        for i, row in enumerate(reader):
            seq = row.get(seq_column)
            if seq is None:
                raise ValueError(f"{path}: row {i + 2} has no value in column {seq_column!r}")
            yield (row[id_column] if id_column else str(i)), seq.strip()


def read_bed_sequences(bed: str | Path, fasta: str | Path) -> Iterator[Record]:
    """Stream the sequences of BED intervals (chrom, start, end[, name, score, strand]) from a FASTA.

    A '-' strand gives the reverse complement. The name is column 4 if present, else chrom:start-end.
    """
    from hyenadna.genome import Genome

    genome = Genome(fasta)
    for row in read_bed_rows(bed):
        cols = row.columns
        try:
            seq = genome.fetch(row.chrom, row.start, row.end, strand=cols[5] if len(cols) >= 6 else "+")
        except ValueError as err:
            raise ValueError(f"{row.where}: {err}") from None
        yield (cols[3] if len(cols) >= 4 and cols[3] else f"{row.chrom}:{row.start}-{row.end}"), seq


def guess_format(path: str | Path) -> str | None:
    """The input format ('fasta', 'csv' or 'bed') that the name of `path` says, ignoring .gz; None if unknown."""
    name = Path(path).name.lower().removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    return {"fa": "fasta", "fasta": "fasta", "fna": "fasta", "csv": "csv", "tsv": "csv", "bed": "bed"}.get(suffix)


def open_records(path: str | Path, fmt: str | None = None, *, fasta: str | Path | None = None,
                 seq_column: str = "sequence", id_column: str | None = None) -> Callable[[], Iterator[Record]]:
    """A re-openable record source for FASTA / CSV / TSV / BED(+fasta) input, by suffix or `fmt`."""
    path = Path(path)
    if fmt is None:
        fmt = guess_format(path)
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from the name; pass fmt= fasta, csv or bed")
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if fmt == "fasta":
        return lambda: read_fasta_records(path)
    if fmt == "csv":
        return lambda: read_csv_sequences(path, seq_column, id_column)
    if fmt == "bed":
        if fasta is None:
            raise ValueError(f"{path}: BED input needs a reference FASTA (fasta=)")
        return lambda: read_bed_sequences(path, fasta)
    raise ValueError(f"unknown input format {fmt!r}; use fasta, csv or bed")


# --------------------------------------------------------------------------------------------
# Batching and the forward pass
# --------------------------------------------------------------------------------------------


def _backbone(model: nn.Module) -> HyenaDNAModel:
    if isinstance(model, HyenaDNAModel):
        return model
    if isinstance(model, (HyenaDNAForCausalLM, HyenaDNAForSequenceClassification)):
        return model.backbone
    raise TypeError(f"expected a HyenaDNA model, got {type(model).__name__}")


def _autocast(device: torch.device, precision: Precision):  # type: ignore[no-untyped-def]
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_records(records: Iterable[Record], tokenizer: CharTokenizer, l_max: int,
                  progress: bool = False) -> tuple[list[str], np.ndarray]:
    """Validate every record (characters, non-empty, length <= l_max) -> (names, lengths)."""
    names: list[str] = []
    lengths: list[int] = []
    for i, (name, seq) in enumerate(_progress(records, progress, "checking input")):
        try:
            n = tokenizer.encode(seq).size
        except ValueError as err:
            raise ValueError(f"record {i} ({name!r}): {err}") from None
        if n == 0:
            raise ValueError(f"record {i} ({name!r}) is empty")
        if n > l_max:
            raise ValueError(f"record {i} ({name!r}) has {n} bases, more than the model's l_max={l_max}; "
                             "split it into windows of at most l_max bases first")
        names.append(name)
        lengths.append(n)
    if not names:
        raise ValueError("the input has no sequences")
    return names, np.asarray(lengths, dtype=np.int64)


def _batches(records: Iterable[Record], batch_size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(it: Iterable, enabled: bool, desc: str, total: int | None = None,  # type: ignore[type-arg]
              unit: str = "seq") -> Iterable:  # type: ignore[type-arg]
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit=unit, dynamic_ncols=True)


def _encode(tokenizer: CharTokenizer, seqs: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    enc = tokenizer.batch_encode(seqs, padding_side="right")
    return (torch.from_numpy(enc["input_ids"]).to(device), torch.from_numpy(enc["attention_mask"]).to(device))


@torch.inference_mode()
def hidden_states(model: nn.Module, input_ids: Tensor, precision: Precision = "fp32") -> Tensor:
    """Final hidden states (B, L, D) in fp32 for (B, L) ids."""
    with _autocast(input_ids.device, precision):
        return _backbone(model)(input_ids).float()


def pool(hidden: Tensor, attention_mask: Tensor, pooling: Pooling) -> Tensor:
    """(B, L, D) + right-padding mask (B, L) -> (B, D) for mean/last; (B, L, D) zeroed at padding for 'none'."""
    if pooling == "none":
        return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
    m = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)
    if pooling == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean', 'last' or 'none', got {pooling!r}")


def embed(model: nn.Module, tokenizer: CharTokenizer, seqs: list[str], pooling: Pooling = "mean",
          batch_size: int = 16, precision: Precision = "fp32") -> Tensor | tuple[Tensor, Tensor]:
    """In-memory embeddings of a few sequences: (N, D) pooled, or ((N, L, D), mask (N, L)) for 'none'."""
    device = _device_of(model)
    _, lengths = check_records([(str(i), s) for i, s in enumerate(seqs)], tokenizer, _backbone(model).config.l_max)
    model.eval()
    if pooling != "none":
        out = []
        for i in range(0, len(seqs), batch_size):
            ids, mask = _encode(tokenizer, seqs[i:i + batch_size], device)
            out.append(pool(hidden_states(model, ids, precision), mask, pooling).cpu())
        return torch.cat(out)
    width = int(lengths.max())
    ids, mask = _encode(tokenizer, seqs, device)
    hidden = torch.cat([pool(hidden_states(model, ids[i:i + batch_size], precision), mask[i:i + batch_size], "none").cpu()
                        for i in range(0, len(seqs), batch_size)])
    return hidden[:, :width], mask[:, :width].cpu().bool()


@dataclass
class EmbeddingSummary:
    """What `embed_to_file` wrote."""

    n_sequences: int
    dim: int
    files: list[Path] = field(default_factory=list)


def embed_outputs(output: str | Path, pooling: Pooling = "mean") -> list[Path]:
    """The paths `embed_to_file` writes for `output`, checked before any work.

    A ``.npy`` output is the array, ``<stem>.mask.npy`` (per position only) and
    ``<stem>.ids.txt``; any other output is one shard folder, which must be new or empty
    (shards of an earlier run would mix with the new ones).
    """
    output = Path(output)
    if output.suffix == ".npy":
        stem = output.with_suffix("")
        paths = [output, *([Path(f"{stem}.mask.npy")] if pooling == "none" else []), Path(f"{stem}.ids.txt")]
        for path in paths:
            if path.is_dir():
                raise ValueError(f"{path} is a folder; the embeddings need a file there")
        return paths
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is a file, not a folder for shards (name a .npy file for one array)")
    if output.is_dir():
        held = sorted(p.name for p in output.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (f", ... ({len(held)} in all)" if len(held) > 3 else "")
            raise ValueError(f"shard folder {output} is not empty (it holds {shown}); embed into a new or empty "
                             "folder, so that earlier shards do not mix with the new ones")
    return [output]


def _open_npy(path: Path, shape: tuple[int, ...], dtype: type, name: Path) -> np.memmap:
    """A new .npy memory map at `path` whose blocks are reserved on disk (errors name `name`)."""
    with naming_os_errors(name):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        # open_memmap makes a sparse file; on a full disk its pages would then fail one by one as
        # SIGBUS when written, so reserve them now and fail here with ENOSPC instead.
        if not hasattr(os, "posix_fallocate"):  # macOS and Windows: the sparse file, as before
            return arr
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot reserve: as before
                raise
        finally:
            os.close(fd)
    return arr


def embed_to_file(model: nn.Module, tokenizer: CharTokenizer, records: Callable[[], Iterable[Record]],
                  output: str | Path, pooling: Pooling = "mean", batch_size: int = 16,
                  precision: Precision = "fp32", shard_size: int = 4096, progress: bool = True,
                  shard_format: Literal["pt", "safetensors"] = "pt") -> EmbeddingSummary:
    """Embed every record of `records()` and stream the results to disk.

    ``output`` ending in ``.npy``: one memory-mapped array, (N, D) pooled or (N, L_max_in, D)
    per position with ``<stem>.mask.npy`` (N, L) marking real positions; names in
    ``<stem>.ids.txt``. Any other ``output`` is a new or empty directory of shards of exactly
    `shard_size` records each (the last one may hold fewer), padded per position to the shard's
    longest record: ``.pt`` files ``{"ids", "embeddings", "attention_mask" (per position only)}``,
    or with ``shard_format="safetensors"`` ``.safetensors`` files holding the same tensors and the
    names as a uint8 tensor ``ids`` (`load_embedding_shard`; no torch needed to read them).
    The input is read twice: once to check it and size the output, once to embed it. Everything
    is written under temporary sibling names and renamed into place at the end, so a failure
    leaves the previous outputs (or none) as they were.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be a number of records >= 1, got {shard_size}")
    if shard_format not in ("pt", "safetensors"):
        raise ValueError(f"shard_format must be 'pt' or 'safetensors', got {shard_format!r}")
    output = Path(output)
    targets = embed_outputs(output, pooling)
    backbone = _backbone(model)
    device = _device_of(model)
    names, lengths = check_records(records(), tokenizer, backbone.config.l_max, progress)
    n, dim = len(names), backbone.config.d_model
    model.eval()
    summary = EmbeddingSummary(n, dim)
    batches = _progress(_batches(records(), batch_size), progress, "embedding", total=math.ceil(n / batch_size),
                        unit="batch")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        with atomic_outputs(targets) as tmps:
            width = int(lengths.max())
            shape = (n, dim) if pooling != "none" else (n, width, dim)
            arr = _open_npy(tmps[0], shape, np.float32, targets[0])
            mask_arr = _open_npy(tmps[1], (n, width), np.bool_, targets[1]) if pooling == "none" else None
            row = 0
            for batch in batches:
                ids, mask = _encode(tokenizer, [s for _, s in batch], device)
                vec = pool(hidden_states(model, ids, precision), mask, pooling).cpu().numpy()
                if mask_arr is not None:
                    arr[row:row + len(batch), : vec.shape[1]] = vec
                    arr[row:row + len(batch), vec.shape[1]:] = 0
                    mask_arr[row:row + len(batch)] = False
                    mask_arr[row:row + len(batch), : vec.shape[1]] = mask.cpu().numpy().astype(bool)
                else:
                    arr[row:row + len(batch)] = vec
                row += len(batch)
            arr.flush()
            if mask_arr is not None:
                mask_arr.flush()
            with naming_os_errors(targets[-1]):
                tmps[-1].write_text("".join(name + "\n" for name in names))
        summary.files.extend(targets)
        return summary
    if shard_format == "safetensors":
        bad = next((i for i, name in enumerate(names) if "\n" in name), None)
        if bad is not None:
            raise ValueError(f"record {bad} ({names[bad]!r}): a name with a newline cannot be stored in a "
                             "safetensors shard's newline-separated ids")
    pending: list[tuple[list[str], Tensor, Tensor]] = []
    count = 0
    with atomic_outputs([output]) as [folder]:
        folder.mkdir()

        def write_shard(part: list[tuple[list[str], Tensor, Tensor]]) -> None:
            ids_list = [name for names_b, _, _ in part for name in names_b]
            msk = None
            if pooling == "none":
                width = max(int(m.sum(1).max()) for _, _, m in part)  # the longest record of this shard
                emb = torch.cat([F.pad(h, (0, 0, 0, max(width - h.shape[1], 0)))[:, :width] for _, h, _ in part])
                msk = torch.cat([F.pad(m, (0, max(width - m.shape[1], 0)))[:, :width] for _, _, m in part])
            else:
                emb = torch.cat([h for _, h, _ in part])
            name = f"shard-{len(summary.files):05d}.{shard_format}"
            if shard_format == "safetensors":
                blob = _safetensors_shard(ids_list, emb, msk, pooling)
            else:
                # torch.save into a file turns a failed write (full disk) into an opaque RuntimeError
                # ('unexpected pos ...'); serialised in memory first, the write raises a plain OSError.
                buffer = io.BytesIO()
                payload = {"ids": ids_list, "embeddings": emb, **({"attention_mask": msk} if msk is not None else {})}
                torch.save(payload, buffer)
                blob = buffer.getvalue()
            with naming_os_errors(output / name), open(folder / name, "wb") as f:
                f.write(blob)
            summary.files.append(output / name)

        for batch in batches:
            ids, mask = _encode(tokenizer, [s for _, s in batch], device)
            vec = pool(hidden_states(model, ids, precision), mask, pooling).cpu()
            pending.append(([name for name, _ in batch], vec, mask.cpu().bool()))
            count += len(batch)
            while count >= shard_size:  # exactly shard_size records per shard; a batch may span two
                part, pending = _split_records(pending, shard_size)
                write_shard(part)
                count -= shard_size
        if count:
            write_shard(pending)
    return summary


def _split_records(pending: list[tuple[list[str], Tensor, Tensor]],
                   n: int) -> tuple[list[tuple[list[str], Tensor, Tensor]], list[tuple[list[str], Tensor, Tensor]]]:
    """The first `n` records of the batches in `pending`, and the rest."""
    taken, rest = [], []
    for names, h, m in pending:
        k = min(max(n, 0), len(names))
        if k:
            taken.append((names[:k], h[:k], m[:k]))
        if k < len(names):
            rest.append((names[k:], h[k:], m[k:]))
        n -= k
    return taken, rest


# A safetensors shard holds the tensors and the record names together, readable without torch.
SHARD_IDS_KEY = "ids"  # uint8 tensor: the UTF-8 of the record names joined by "\n"


def _safetensors_shard(ids: list[str], emb: Tensor, mask: Tensor | None, pooling: str) -> bytes:
    from safetensors.numpy import save

    tensors = {"embeddings": emb.numpy(), SHARD_IDS_KEY: np.frombuffer("\n".join(ids).encode(), dtype=np.uint8)}
    if mask is not None:
        tensors["attention_mask"] = mask.numpy()
    return save(tensors, metadata={"format": "hyenadna-embeddings", "pooling": pooling, "records": str(len(ids)),
                                   "ids": "uint8 tensor 'ids': UTF-8 record names joined by newlines"})


def load_embedding_shard(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` shard of `embed_to_file` as numpy: ``ids`` (list of str), ``embeddings``
    (N, D) or (N, L, D) and, per position, ``attention_mask`` (N, L). Needs safetensors and numpy
    only (no torch): ``safetensors.numpy.load_file(path)`` gives the same arrays, with the ids as
    the uint8 tensor ``ids`` (``bytes(t).decode().split("\\n")``)."""
    from safetensors.numpy import load_file

    tensors: dict[str, Any] = dict(load_file(str(path)))
    tensors["ids"] = tensors.pop(SHARD_IDS_KEY).tobytes().decode("utf-8").split("\n")
    return tensors


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _lm(model: nn.Module) -> HyenaDNAForCausalLM:
    if not isinstance(model, HyenaDNAForCausalLM):
        raise TypeError(f"scoring and generation need a HyenaDNAForCausalLM (an LM head), got {type(model).__name__}")
    return model


@torch.inference_mode()
def token_log_probs(model: HyenaDNAForCausalLM, input_ids: Tensor, precision: Precision = "fp32") -> Tensor:
    """log p(x_t | x_<t) for t = 1..L-1: (B, L-1) in fp32 (softmax over the full vocabulary)."""
    with _autocast(input_ids.device, precision):
        logits = _lm(model)(input_ids).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None].long()).squeeze(-1)


@dataclass
class SequenceScore:
    """Log-likelihood of one sequence; the first base has no context and is not scored."""

    name: str
    length: int
    n_scored: int
    log_likelihood: float  # natural log, summed over bases 2..L

    @property
    def perplexity(self) -> float:
        """exp(-mean log-likelihood per scored base)."""
        return math.exp(-self.log_likelihood / self.n_scored) if self.n_scored else float("nan")


def score_sequences(model: nn.Module, tokenizer: CharTokenizer, records: Iterable[Record],
                    batch_size: int = 16, precision: Precision = "fp32", progress: bool = False) -> Iterator[SequenceScore]:
    """Per-sequence log-likelihood and perplexity under the LM, batched with right padding."""
    lm = _lm(model).eval()
    device = _device_of(lm)
    l_max = lm.config.l_max
    for batch in _progress(_batches(records, batch_size), progress, "scoring", unit="batch"):
        for name, seq in batch:
            if len(seq) > l_max:
                raise ValueError(f"record {name!r} has {len(seq)} bases, more than l_max={l_max}")
        ids, mask = _encode(tokenizer, [s for _, s in batch], device)
        lp = token_log_probs(lm, ids, precision) * mask[:, 1:]
        for (name, _), total, n in zip(batch, lp.sum(1).tolist(), mask.sum(1).tolist()):
            yield SequenceScore(name, int(n), int(n) - 1, float(total))


# --------------------------------------------------------------------------------------------
# Variant effects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One SNV from a VCF line (POS is 1-based, as in the VCF); `line` is 0 when read by a region query."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    line: int


@dataclass
class VariantScore:
    """LLR = log P(alt window) - log P(ref window); > 0 means the model prefers the alt allele."""

    variant: Variant
    llr: float
    llr_forward: float
    llr_reverse: float | None = None


@dataclass
class VepResult:
    """Scores plus every skipped record with its reason."""

    scores: list[VariantScore]
    skipped: list[tuple[Variant | None, int, str]]  # (variant if parsed, VCF line, reason)

    def skip_counts(self) -> Counter:  # type: ignore[type-arg]
        """Number of skipped records per reason category."""
        return Counter(reason.split(":")[0] for _, _, reason in self.skipped)


_BASES = set("ACGT")


class ReferenceMismatchError(ValueError):
    """A VCF header's ``##contig`` length differs from that sequence's length in the FASTA."""


def parse_region(text: str) -> tuple[str, int | None, int | None]:
    """``CHROM``, ``CHROM:START`` or ``CHROM:START-END`` (1-based, inclusive, as tabix and samtools
    take it; commas allowed) -> (chrom, start, end), None where open."""
    chrom, _, span = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    try:
        first, _, last = span.replace(",", "").partition("-")
        start = int(first) if first else None
        end = int(last) if last else None
    except ValueError:
        start = end = -1
    if not chrom or (start is not None and start < 1) or (end is not None and (end < 1 or (start or 1) > end)):
        raise ValueError(f"region {text!r}: expected CHROM, CHROM:START or CHROM:START-END (1-based, inclusive, "
                         "START <= END)")
    return chrom, start, end


def _alleles(chrom: str, pos: int, vid: str, ref: str, alts: Sequence[str], filters: list[str], number: int,
             pass_only: bool) -> Iterator[tuple[Variant | None, int, str | None]]:
    """(variant, line, skip reason) per ALT allele of one VCF record; reason None for a usable SNV."""
    for alt in alts:
        v = Variant(chrom, pos, vid, ref.upper(), alt.upper(), number)
        if pass_only and filters != ["PASS"]:
            yield v, number, f"filtered: FILTER={';'.join(filters) or '.'} (--pass-only keeps PASS only)"
        elif len(v.ref) != 1 or len(v.alt) != 1 or v.ref not in _BASES or v.alt not in _BASES:
            yield v, number, f"not an SNV: REF={ref} ALT={alt}"
        elif v.ref == v.alt:
            yield v, number, "not an SNV: ALT equals REF"
        else:
            yield v, number, None


_CONTIG_LINE = re.compile(r"^##contig=<(?=.*\bID=([^,>]+))(?:(?=.*\blength=(\d+)))?")


class VcfReader:
    """The records of a VCF as (variant, line, skip reason) per ALT allele, through htslib.

    `pysam.VariantFile` (htslib, the reference VCF/BCF and tabix implementation) reads the file:
    header, FILTER, ``##contig`` lengths (`contigs`) and, for a bgzipped VCF with a ``.tbi`` /
    ``.csi`` index, a `region` (`parse_region`). Where pysam is not installed or htslib refuses the
    file (a VCF without a full ``#CHROM ... INFO`` header line, headerless, plain gzip) a line reader
    of the first five (and FILTER) columns takes over; it cannot query a region. `pass_only` skips,
    with a reason, records whose FILTER is not PASS. ``line`` is the record's line in the file (0
    for a region query, where htslib jumps through the index).
    """

    def __init__(self, path: str | Path, region: str | None = None, pass_only: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"VCF file not found: {self.path}")
        self.region = None if region is None else parse_region(region)
        self.pass_only = pass_only
        self._vf, refused = self._open_htslib()
        if self._vf is None and self.region is not None:
            raise ValueError(f"{self.path}: a region query needs a bgzipped VCF with a tabix index that htslib "
                             f"reads, and {refused}")
        if self._vf is not None and self.region is not None and self._vf.index is None:
            raise ValueError(f"{self.path} has no tabix index ({self.path.name}.tbi or .csi) for the region query "
                             f"{region!r}: bgzip the VCF and index it (`tabix -p vcf {self.path.name}`)")
        self.contigs: dict[str, int | None] = self._contigs()

    def _open_htslib(self):  # type: ignore[no-untyped-def]
        try:
            import pysam
        except ImportError:
            return None, "pysam is not installed"
        previous = pysam.set_verbosity(0)  # htslib's own stderr lines; the refusal is reported here
        try:
            return pysam.VariantFile(str(self.path)), ""
        except Exception as err:  # noqa: BLE001 - htslib raises ValueError/OSError/NotImplementedError
            return None, f"htslib refuses this one ({err})"
        finally:
            pysam.set_verbosity(previous)

    @property
    def uses_htslib(self) -> bool:
        """True when htslib reads the file, False for the line reader."""
        return self._vf is not None

    def _contigs(self) -> dict[str, int | None]:
        if self._vf is not None:
            return {name: c.length for name, c in self._vf.header.contigs.items()}
        contigs: dict[str, int | None] = {}
        with open_text(self.path) as f:
            for line in f:
                if not line.startswith("##"):
                    break
                if m := _CONTIG_LINE.match(line):
                    contigs[m.group(1)] = int(m.group(2)) if m.group(2) else None
        return contigs

    def _header_lines(self) -> int:
        with open_text(self.path) as f:
            return sum(1 for _ in itertools.takewhile(lambda line: line.startswith("#"), f))

    def __iter__(self) -> Iterator[tuple[Variant | None, int, str | None]]:
        if self._vf is None:
            yield from self._read_text()
            return
        import pysam

        vf = self._vf
        if self.region is not None:
            chrom, start, end = self.region
            if chrom not in vf.header.contigs:
                raise ValueError(f"{self.path}: region {chrom!r} is not a chromosome of this VCF "
                                 f"(its header has {', '.join(list(vf.header.contigs)[:8]) or 'no ##contig'})")
            records, number = vf.fetch(chrom, None if start is None else start - 1, end), None
        else:
            records, number = iter(vf), self._header_lines()
        previous = pysam.set_verbosity(0)
        try:
            while True:
                try:
                    rec = next(records)
                except StopIteration:
                    break
                except (OSError, ValueError) as err:
                    where = f"{self.path}:{number + 1}" if number is not None else f"{self.path} (region {self.region})"
                    raise ValueError(f"{where}: htslib cannot read this record ({err}); fix or remove it") from None
                if number is not None:
                    number += 1
                yield from _alleles(rec.chrom, rec.pos, rec.id or ".", rec.ref or "", rec.alts or (".",),
                                    list(rec.filter.keys()), number or 0, self.pass_only)
        finally:
            pysam.set_verbosity(previous)
            vf.close()

    def _read_text(self) -> Iterator[tuple[Variant | None, int, str | None]]:
        with open_text(self.path) as f:
            for number, line in enumerate(f, start=1):
                if line.startswith("#") or not line.strip():
                    continue
                cols = line.rstrip("\r\n").split("\t")
                if len(cols) < 5:
                    yield None, number, f"malformed: {len(cols)} columns, need CHROM POS ID REF ALT"
                    continue
                chrom, pos_text, vid, ref, alts = cols[:5]
                try:
                    pos = int(pos_text)
                except ValueError:
                    yield None, number, f"malformed: POS {pos_text!r} is not an integer"
                    continue
                flt = cols[6].strip() if len(cols) > 6 else "."
                filters = [] if flt in ("", ".") else flt.split(";")
                yield from _alleles(chrom, pos, vid, ref, alts.split(","), filters, number, self.pass_only)


def read_vcf(path: str | Path, region: str | None = None,
             pass_only: bool = False) -> Iterator[tuple[Variant | None, int, str | None]]:
    """Stream (variant, line, skip reason) per ALT allele; reason is None for a usable SNV (`VcfReader`)."""
    return iter(VcfReader(path, region=region, pass_only=pass_only))


def check_vcf_contigs(reader: VcfReader, chrom_lengths: dict[str, int], fasta: str | Path) -> None:
    """Raise `ReferenceMismatchError` when a ``##contig`` length of the VCF differs from the FASTA's."""
    for name, length in reader.contigs.items():
        have = chrom_lengths.get(name)
        if length is not None and have is not None and have != length:
            raise ReferenceMismatchError(
                f"{reader.path}: its header says ##contig=<ID={name},length={length}> but {name} has {have} bases "
                f"in FASTA {fasta}: the VCF was called against another reference; give the FASTA it was called on")


def variant_effects(model: nn.Module, tokenizer: CharTokenizer, vcf: str | Path, fasta: str | Path,
                    window: int = 1024, reverse_complement: bool = False, batch_size: int = 16,
                    precision: Precision = "fp32", progress: bool = False, region: str | None = None,
                    pass_only: bool = False) -> VepResult:
    """Score every SNV of `vcf` against `fasta` by the LLR over a window centred on it.

    The window holds `window` reference bases [pos0 - window//2, pos0 - window//2 + window);
    the alt window differs at one base. Only bases from the variant onwards differ in
    likelihood (the model is causal), so the sum runs over those. With `reverse_complement`
    the LLR is the mean of both strands. REF mismatches, non-SNVs, unknown chromosomes and
    windows that would cross a chromosome end are skipped and reported, never dropped silently;
    so are non-PASS records with `pass_only`. `region` (``chr1:1000-2000``, 1-based inclusive) reads
    only that range of a tabix-indexed VCF. A ``##contig`` length that differs from the FASTA's is a
    `ReferenceMismatchError` before any scoring.
    """
    from hyenadna.genome import Genome

    lm = _lm(model).eval()
    if not 2 <= window <= lm.config.l_max:
        raise ValueError(f"window must be in [2, l_max={lm.config.l_max}], got {window}")
    reader = VcfReader(vcf, region=region, pass_only=pass_only)
    genome = Genome(fasta)
    check_vcf_contigs(reader, genome.chrom_lengths, fasta)
    device = _device_of(lm)
    half = window // 2
    result = VepResult([], [])
    batch: list[tuple[Variant, str]] = []
    from tqdm.auto import tqdm

    bar = tqdm(desc="variants", unit="variant", disable=not progress, dynamic_ncols=True)
    for v, line, reason in reader:
        if reason is not None:
            result.skipped.append((v, line, reason))
            continue
        assert v is not None
        length = genome.chrom_lengths.get(v.chrom)
        if length is None:
            alias = next((c for c in (f"chr{v.chrom}", v.chrom.removeprefix("chr")) if c in genome.chrom_lengths), None)
            hint = f" (the FASTA has {alias!r}: rename the VCF's chromosomes)" if alias else ""
            result.skipped.append((v, line, f"unknown chromosome: {v.chrom!r} is not in {fasta}{hint}"))
            continue
        pos0 = v.pos - 1
        if not 0 <= pos0 < length:
            result.skipped.append((v, line, f"outside chromosome: POS {v.pos} but {v.chrom} has {length} bases"))
            continue
        start = pos0 - half
        if start < 0 or start + window > length:
            result.skipped.append((v, line, f"near chromosome end: window [{start}, {start + window}) "
                                            f"does not fit in {v.chrom} (length {length})"))
            continue
        seq = genome.fetch(v.chrom, start, start + window).upper()
        if seq[half] != v.ref:
            result.skipped.append((v, line, f"REF mismatch: VCF REF={v.ref} but the FASTA has {seq[half]}"))
            continue
        batch.append((v, seq))
        if len(batch) == batch_size:  # stream: only one batch of windows is ever held in memory
            result.scores.extend(_score_variants(lm, tokenizer, batch, half, reverse_complement, device, precision))
            bar.update(len(batch))
            batch = []
    if batch:
        result.scores.extend(_score_variants(lm, tokenizer, batch, half, reverse_complement, device, precision))
        bar.update(len(batch))
    bar.close()
    return result


def _score_variants(lm: HyenaDNAForCausalLM, tokenizer: CharTokenizer, batch: list[tuple[Variant, str]], half: int,
                    reverse_complement: bool, device: torch.device, precision: Precision) -> list[VariantScore]:
    """LLRs of one batch of (variant, reference window) pairs, forward and optionally reverse strand."""
    window = len(batch[0][1])
    refs = [seq for _, seq in batch]
    alts = [seq[:half] + v.alt + seq[half + 1:] for v, seq in batch]
    fwd = _llr(lm, tokenizer, refs, alts, half, device, precision)
    rev = None
    if reverse_complement:
        from hyenadna.genome import reverse_complement_str as rc

        rev = _llr(lm, tokenizer, [rc(s) for s in refs], [rc(s) for s in alts], window - 1 - half, device, precision)
    out = []
    for i, (v, _) in enumerate(batch):
        f = float(fwd[i])
        r = None if rev is None else float(rev[i])
        out.append(VariantScore(v, f if r is None else (f + r) / 2, f, r))
    return out


def _llr(lm: HyenaDNAForCausalLM, tokenizer: CharTokenizer, refs: list[str], alts: list[str], offset: int,
         device: torch.device, precision: Precision) -> Tensor:
    ids, _ = _encode(tokenizer, refs + alts, device)
    # lp[:, j] predicts token j+1; a variant at 0 has no context, so its successors are summed
    lp = token_log_probs(lm, ids, precision)[:, max(offset - 1, 0):]
    total = lp.sum(1)
    n = len(refs)
    return (total[n:] - total[:n]).cpu()


def vep_skipped_path(path: str | Path) -> Path:
    """Where the skipped records of the vep TSV `path` go: ``<stem>.skipped.tsv`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".skipped.tsv")


def _write_skipped(f: TextIO, result: VepResult) -> None:
    f.write("vcf_line\tchrom\tpos\tid\tref\talt\treason\n")
    for v, line, reason in result.skipped:
        cols = [v.chrom, str(v.pos), v.id, v.ref, v.alt] if v else [""] * 5
        f.write("\t".join([str(line) if line else "", *cols, reason]) + "\n")


def write_vep_tsv(result: VepResult, path: str | Path) -> Path:
    """Write scores to `path` (TSV keyed by chrom/pos/id/ref/alt) and skips to <stem>.skipped.tsv.

    Both are written to temporary files and renamed into place only once both are complete.
    """
    path = Path(path)
    skipped = vep_skipped_path(path)
    with atomic_write(path) as f, atomic_write(skipped) as g:
        with naming_os_errors(path):  # else the inner atomic_write would name a failed write of `f` as its own
            f.write("chrom\tpos\tid\tref\talt\tllr\tllr_forward\tllr_reverse\n")
            for s in result.scores:
                v = s.variant
                rev = "" if s.llr_reverse is None else f"{s.llr_reverse:.6g}"
                f.write(f"{v.chrom}\t{v.pos}\t{v.id}\t{v.ref}\t{v.alt}\t{s.llr:.6g}\t{s.llr_forward:.6g}\t{rev}\n")
        _write_skipped(g, result)
    return skipped


def write_vep_skipped(result: VepResult, path: str | Path) -> Path:
    """Write only the skipped records of the vep TSV `path` (when nothing was scored); -> their file."""
    skipped = vep_skipped_path(path)
    with atomic_write(skipped) as g:
        _write_skipped(g, result)
    return skipped


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Temperature, top-k and nucleus (top-p) filtering of (N, V) logits; removed entries are -inf."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use top_k=1 for greedy decoding)")
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the best one always stays).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class CachedDecoder:
    """Exact incremental decoding for generation: O(L D) per new token instead of a full forward.

    Hyena's long convolution is causal, so the output at a new position t needs only the
    long-conv inputs of positions <= t and the last k-1 inputs of the short convolution. The
    decoder holds that per layer (`hyenadna.model.HyenaState`, the filter computed once for the
    final length); the layers do the math (`HyenaOperator.step`). The prompt runs through the
    model's own forward once; each further token through `HyenaDNAModel.step`. Pinned against the
    full forward by a test.
    """

    def __init__(self, lm: HyenaDNAForCausalLM, batch: int, total_len: int) -> None:
        self.lm, self.total_len, self.t = lm, total_len, 0
        self.states = lm.backbone.init_states(batch, total_len)

    def prefill(self, input_ids: Tensor) -> Tensor:
        """Run the prompt (B, L) through the full model; -> logits of its last position (B, V)."""
        logits = self.lm.lm_head(self.lm.backbone(input_ids, states=self.states))[:, -1]
        self.t = input_ids.shape[1]
        return logits

    def step(self, token: Tensor) -> Tensor:
        """Append one token per row (B,); -> logits of the new position (B, V)."""
        if self.t >= self.total_len:
            raise ValueError(f"CachedDecoder was sized for {self.total_len} positions")
        logits = self.lm.lm_head(self.lm.backbone.step(token, self.states))
        self.t += 1
        return logits


@torch.inference_mode()
def generate(model: nn.Module, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, num_samples: int = 1, alphabet: str = "ACGT",
             precision: Precision = "fp32", use_cache: bool = True) -> list[str]:
    """Sample `num_samples` continuations of `prompt` (the continuation only is returned).

    Only the letters of `alphabet` can be sampled (never special or padding tokens). With
    `use_cache` (default) each new token costs O(L D) through `CachedDecoder`; without it each
    step re-runs the model on the whole prefix (the slow reference, O(L log L) per layer).
    """
    lm = _lm(model).eval()
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    prompt_ids = tokenizer.encode(prompt)
    if prompt_ids.size == 0:
        raise ValueError("the prompt is empty; give at least one base")
    total = prompt_ids.size + max_new_tokens
    if total > lm.config.l_max:
        raise ValueError(f"prompt ({prompt_ids.size}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"the model's l_max={lm.config.l_max}")
    device = _device_of(lm)
    allowed = torch.as_tensor(tokenizer.encode(alphabet), device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    ids = torch.as_tensor(prompt_ids, device=device).repeat(num_samples, 1)
    decoder = CachedDecoder(lm, num_samples, total) if use_cache else None
    with _autocast(device, precision):
        logits = decoder.prefill(ids) if decoder else lm(ids).logits[:, -1]
    for step in range(max_new_tokens):
        scores = filter_logits(logits[:, allowed], temperature, top_k, top_p)
        choice = allowed[torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)]
        ids = torch.cat([ids, choice], dim=1)
        if step + 1 < max_new_tokens:
            with _autocast(device, precision):
                logits = decoder.step(choice[:, 0]) if decoder else lm(ids).logits[:, -1]
    return [tokenizer.decode(row[prompt_ids.size:].cpu().numpy()) for row in ids]
