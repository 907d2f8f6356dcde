"""The ``hyenadna`` command: convert checkpoints, embed, score, variant effects, generate.

    hyenadna convert  SRC DST                       # release dir / Lightning .ckpt -> our format
    hyenadna embed    MODEL INPUT -o emb.npy        # FASTA / CSV / BED (+ --fasta) -> embeddings
    hyenadna embed    MODEL INPUT -o emb/ --shard-format safetensors   # shards of ids + vectors, no torch to read
    hyenadna score    MODEL INPUT -o scores.tsv     # log-likelihood and perplexity per sequence
    hyenadna vep      MODEL --vcf v.vcf --fasta ref.fa -o vep.tsv [--region chr1:1-1000000] [--pass-only]
    hyenadna generate MODEL --prompt ACGT --max-new-tokens 200 --seed 0

MODEL is anything `hyenadna.load_pretrained` reads, a Hugging Face Hub id or released name
included (``hyenadna score hyenadna-tiny-1k-seqlen seqs.fa``; ``--revision`` pins a commit).
Errors (in the input, of the file system such as a full disk, or a run that produced nothing,
such as a vep that scored no variant) are printed as one line naming the file, record or flag,
with exit status 1; a flag value argparse rejects exits with status 2. No command writes onto one of its inputs, and every output file is
written under a temporary name and renamed into place at the end, so a failure leaves the
previous file (or none) as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import torch

from hyenadna.checkpoint import (
    CONFIG_NAME,
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_NAME,
    Checkpoint,
    UnsafeCheckpointError,
    build_model,
    read_checkpoint,
    save_pretrained,
)
from hyenadna.files import atomic_write, check_outputs_are_not_inputs, describe_os_error, naming_os_errors
from hyenadna.inference import (
    Record,
    check_records,
    embed_outputs,
    embed_to_file,
    generate,
    guess_format,
    open_records,
    parse_region,
    score_sequences,
    variant_effects,
    vep_skipped_path,
    write_vep_skipped,
    write_vep_tsv,
)
from hyenadna.tokenizer import CharTokenizer
from hyenadna.version import __version__


SHIFT_HELP = ("override the filter modulation shift: 0.05 (default for releases, as in the official "
              "inference ports) or 0.0 (the official training code)")
REVISION_HELP = "branch, tag or commit of a Hugging Face Hub MODEL (default main)"


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


def _seed(text: str) -> int:
    """An argparse type for --seed: an integer torch's generator takes (it overflows outside [-2**63, 2**64))."""
    try:
        value = int(text)
    except ValueError:
        value = 2**64
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer from -2**63 to 2**64 - 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type for --temperature: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 (use --top-k 1 for greedy decoding), got {text!r}")
    return value


def _fraction(text: str) -> float:
    """An argparse type for --top-p: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's message lists every device type it knows
        raise ValueError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None


def _read(path: str, shift: float | None, revision: str | None = None) -> Checkpoint:
    ckpt = read_checkpoint(path, revision=revision)
    if shift is not None:
        ckpt.config = dataclasses.replace(ckpt.config, shift=shift)
    return ckpt


def _model_files(flag: str, ckpt: Checkpoint) -> dict[str, Path]:
    """The files a checkpoint was read from: weights, and the config / tokenizer beside them."""
    beside = {f"{flag}'s {name}": ckpt.source.parent / name for name in (CONFIG_NAME, TOKENIZER_NAME,
                                                                            TOKENIZER_CONFIG_NAME)}
    return {f"{flag}'s weights": ckpt.source, **{k: v for k, v in beside.items() if v.is_file()}}


def _check_output_file(flag: str, path: str | Path) -> None:
    """Refuse, before any work, an output file path that is a folder or lies in a missing folder."""
    if str(path).endswith(os.sep) or Path(path).is_dir():
        raise ValueError(f"{flag} {path} is a folder; give the name of the file to write")
    if not Path(path).parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {Path(path).parent} does not exist")


def _load(args: argparse.Namespace, outputs: dict[str, str | Path], inputs: dict[str, str | None],
          task: str = "auto"):  # type: ignore[no-untyped-def]
    """Read and build the model, after refusing outputs that are one of the inputs or a file of the model."""
    check_outputs_are_not_inputs(outputs, {"MODEL": args.model, **inputs})
    ckpt = _read(args.model, args.shift, args.revision)
    check_outputs_are_not_inputs(outputs, _model_files("MODEL", ckpt))
    model = build_model(ckpt, task=task, check_buffers=args.check_buffers).to(_device(args.device))
    return model, ckpt.tokenizer or CharTokenizer()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint: release dir, -hf dir, our dir, Lightning .ckpt or weights file, "
                                 "or a Hugging Face Hub id / released name (hyenadna-tiny-1k-seqlen)")
    p.add_argument("--revision", help=REVISION_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision of the forward pass (default fp32)")
    p.add_argument("--check-buffers", choices=["error", "warn"], default="error",
                   help="stored z/t/deltas that differ from the config: error (default) or warn")
    p.add_argument("--shift", type=float, help=SHIFT_HELP)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="FASTA (.fa/.fasta/.fna[.gz]), CSV/TSV, or BED with --fasta")
    p.add_argument("--format", choices=["fasta", "csv", "bed"], help="input format (default: from the suffix)")
    p.add_argument("--fasta", help="reference FASTA for BED input")
    p.add_argument("--seq-column", default="sequence", help="CSV column with the sequence (default: sequence)")
    p.add_argument("--id-column", help="CSV column with the record name (default: row number)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=16)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _records(args: argparse.Namespace) -> Callable[[], Iterator[Record]]:
    fmt = args.format or guess_format(args.input)
    if fmt is None:
        raise ValueError(f"INPUT {args.input}: cannot tell the format from the name; pass --format fasta, csv or bed")
    if fmt == "bed" and args.fasta is None:
        raise ValueError(f"INPUT {args.input} is BED: pass the reference FASTA of its intervals with --fasta")
    return open_records(args.input, fmt, fasta=args.fasta, seq_column=args.seq_column, id_column=args.id_column)


def _inputs(args: argparse.Namespace) -> dict[str, str | None]:
    return {"INPUT": args.input, "--fasta": args.fasta}


def cmd_convert(args: argparse.Namespace) -> None:
    check_outputs_are_not_inputs({"DST": args.dst}, {"SRC": args.src})
    ckpt = _read(args.src, args.shift, args.revision)
    read_from = {"SRC": args.src, **_model_files("SRC", ckpt)}
    check_outputs_are_not_inputs({"DST": args.dst}, read_from)
    dst = Path(args.dst).resolve()
    for name, src in read_from.items():
        if dst in Path(src).resolve().parents:  # save_pretrained replaces the whole folder
            raise ValueError(f"DST {args.dst} holds the input {name} {src}; converting into it would replace "
                             "the input: choose another folder")
    with naming_os_errors(args.dst):  # a write on a full disk names no file
        save_pretrained(build_model(ckpt, check_buffers=args.check_buffers), args.dst, tokenizer=ckpt.tokenizer,
                        extras=ckpt.extras)
    c = ckpt.config
    print(f"read {ckpt.source} ({ckpt.layout} layout): d_model={c.d_model} n_layer={c.n_layer} "
          f"d_inner={c.d_inner} l_max={c.l_max} shift={c.shift}" + (f", classifier head {ckpt.head}" if ckpt.head else ""))
    for note in ckpt.notes:
        print(f"  {note}")
    if ckpt.extras:
        print(f"  kept extra tensors: {', '.join(sorted(ckpt.extras))}")
    size = (Path(args.dst) / "model.safetensors").stat().st_size
    print(f"wrote {args.dst} (model.safetensors {size / 1e6:.1f} MB)")


def cmd_embed(args: argparse.Namespace) -> None:
    targets = embed_outputs(args.output, args.pooling)  # refuses a shard folder that holds files, before any work
    names = ["-o"] + [f"the {p.name.rsplit('.', 2)[-2]} file of -o" for p in targets[1:]]
    records = _records(args)
    model, tok = _load(args, dict(zip(names, targets)), _inputs(args))
    summary = embed_to_file(model, tok, records, args.output, pooling=args.pooling,
                            batch_size=args.batch_size, precision=args.precision,
                            shard_size=args.shard_size, progress=not args.no_progress,
                            shard_format=args.shard_format)
    print(f"embedded {summary.n_sequences} sequences (dim {summary.dim}, pooling {args.pooling}) -> "
          + ", ".join(str(f) for f in summary.files))


def cmd_score(args: argparse.Namespace) -> None:
    if args.output != "-":
        _check_output_file("-o", args.output)
    records = _records(args)
    model, tok = _load(args, {"-o": args.output}, _inputs(args), task="causal_lm")
    check_records(records(), tok, model.config.l_max)  # bad records fail before any output

    def write(out: TextIO) -> None:
        out.write("id\tlength\tn_scored\tlog_likelihood\tperplexity\n")
        for s in score_sequences(model, tok, records(), batch_size=args.batch_size,
                                 precision=args.precision, progress=not args.no_progress):
            out.write(f"{s.name}\t{s.length}\t{s.n_scored}\t{s.log_likelihood:.6g}\t{s.perplexity:.6g}\n")

    if args.output == "-":
        write(sys.stdout)
    else:
        with atomic_write(args.output) as out:
            write(out)


def cmd_vep(args: argparse.Namespace) -> None:
    outputs = {"-o": args.output, "the skipped-records file of -o": vep_skipped_path(args.output)}
    for flag, path in outputs.items():
        _check_output_file(flag, path)
    if args.region is not None:
        try:
            parse_region(args.region)
        except ValueError as err:
            raise ValueError(f"--{err}") from None
    model, tok = _load(args, outputs, {"--vcf": args.vcf, "--fasta": args.fasta}, task="causal_lm")
    l_max = model.config.l_max
    if not 2 <= args.window <= l_max:
        raise ValueError(f"--window must be in [2, {l_max}] (the model's l_max), got {args.window}")
    res = variant_effects(model, tok, args.vcf, args.fasta, window=args.window, reverse_complement=args.rc,
                          batch_size=args.batch_size, precision=args.precision, progress=not args.no_progress,
                          region=args.region, pass_only=args.pass_only)
    n = len(res.scores) + len(res.skipped)
    if n == 0:
        where = f" in --region {args.region}" if args.region else ""
        raise ValueError(f"--vcf {args.vcf} has no variant records{where}; nothing written")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(res.skip_counts().items()))
    if not res.scores:
        # No scores: no score TSV, but the reason of each record, so the user can see what went wrong.
        skipped = write_vep_skipped(res, args.output)
        raise ValueError(f"scored 0 of {n} VCF alleles/records ({counts}); {args.output} not written, "
                         f"the reason for each record is in {skipped}")
    skipped = write_vep_tsv(res, args.output)
    print(f"scored {len(res.scores)} of {n} VCF alleles/records -> {args.output}")
    if res.skipped:
        print(f"skipped {len(res.skipped)} ({counts}); details in {skipped}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    model, tok = _load(args, {}, {}, task="causal_lm")
    try:
        n = tok.encode(args.prompt).size
    except ValueError as err:
        raise ValueError(f"--prompt: {err}") from None
    if n == 0:
        raise ValueError("--prompt is empty; give at least one base")
    if n + args.max_new_tokens > model.config.l_max:
        raise ValueError(f"--prompt ({n} bases) + --max-new-tokens ({args.max_new_tokens}) = "
                         f"{n + args.max_new_tokens} exceeds the model's l_max={model.config.l_max}")
    samples = generate(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_samples=args.num_samples,
                       precision=args.precision, use_cache=not args.no_cache)
    for i, s in enumerate(samples):
        print(f">sample{i}\n{s}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``hyenadna`` command."""
    parser = argparse.ArgumentParser(prog="hyenadna", description="HyenaDNA checkpoints and inference")
    parser.add_argument("--version", action="version", version=f"hyenadna {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a release / Lightning checkpoint into our format")
    p.add_argument("src", help="original or -hf release dir, Lightning .ckpt, weights file, or Hub id / released name")
    p.add_argument("dst", help="output directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)")
    p.add_argument("--revision", help=REVISION_HELP)
    p.add_argument("--check-buffers", choices=["error", "warn"], default="error")
    p.add_argument("--shift", type=float, help=SHIFT_HELP)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("embed", help="embeddings of FASTA / CSV / BED sequences")
    _add_model_args(p)
    _add_input_args(p)
    p.add_argument("-o", "--output", required=True,
                   help="out.npy (memory-mapped array + .ids.txt [+ .mask.npy]) or a directory of shards")
    p.add_argument("--pooling", choices=["mean", "last", "none"], default="mean",
                   help="mean/last over real bases, or none for per-position embeddings (default mean)")
    p.add_argument("--shard-size", type=_int_at_least(1), default=4096,
                   help="records per shard, exactly (the last one may hold fewer; default 4096); the shard folder "
                        "must be new or empty")
    p.add_argument("--shard-format", choices=["pt", "safetensors"], default="pt",
                   help="pt: torch.save dicts (default); safetensors: embeddings + ids readable without torch "
                        "(hyenadna.inference.load_embedding_shard)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("score", help="log-likelihood and perplexity of each sequence")
    _add_model_args(p)
    _add_input_args(p)
    p.add_argument("-o", "--output", default="-", help="TSV file (default: stdout)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("vep", help="variant effect (LLR alt vs ref) of VCF SNVs")
    _add_model_args(p)
    p.add_argument("--vcf", required=True, help="VCF (plain or gzipped), read by htslib (pysam)")
    p.add_argument("--fasta", required=True, help="reference FASTA the VCF refers to")
    p.add_argument("-o", "--output", required=True,
                   help="output TSV; skipped records go to <stem>.skipped.tsv (only that one when none is scored)")
    p.add_argument("--window", type=int, default=1024, help="bases around each variant (default 1024, <= l_max)")
    p.add_argument("--rc", action="store_true", help="average the LLR with the reverse-complement strand")
    p.add_argument("--region", help="only CHROM[:START[-END]] (1-based, inclusive) of a bgzipped, tabix-indexed VCF")
    p.add_argument("--pass-only", action="store_true",
                   help="score only records whose FILTER is PASS (the others are reported as skipped)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=16)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_vep)

    p = sub.add_parser("generate", help="sample continuations of a DNA prompt (FASTA on stdout)")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_int_at_least(0), default=100)
    p.add_argument("--temperature", type=_positive_float, default=1.0)
    p.add_argument("--top-k", type=_int_at_least(1))
    p.add_argument("--top-p", type=_fraction)
    p.add_argument("--seed", type=_seed)
    p.add_argument("--num-samples", type=_int_at_least(1), default=1)
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the full forward for every token (slow exact reference) instead of caching")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyenadna`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OSError as err:  # a full disk, a permission, a folder where a file was expected; named by the writer
        print(f"hyenadna {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, UnsafeCheckpointError) as err:
        print(f"hyenadna {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
