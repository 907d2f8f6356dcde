"""The ``hyenadna`` command: convert checkpoints, embed, score, variant effects, generate.

    hyenadna convert  SRC DST                       # release dir / Lightning .ckpt -> our format
    hyenadna embed    MODEL INPUT -o emb.npy        # FASTA / CSV / BED (+ --fasta) -> embeddings
    hyenadna score    MODEL INPUT -o scores.tsv     # log-likelihood and perplexity per sequence
    hyenadna vep      MODEL --vcf v.vcf --fasta ref.fa -o vep.tsv
    hyenadna generate MODEL --prompt ACGT --max-new-tokens 200 --seed 0

MODEL is anything `hyenadna.load_pretrained` reads. Errors in the input are printed as one
line naming the file and record, with exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hyenadna.checkpoint import Checkpoint, UnsafeCheckpointError, build_model, read_checkpoint, save_pretrained
from hyenadna.inference import (
    check_records,
    embed_to_file,
    generate,
    open_records,
    score_sequences,
    variant_effects,
    write_vep_tsv,
)
from hyenadna.tokenizer import CharTokenizer


SHIFT_HELP = ("override the filter modulation shift: 0.05 (default for releases, as in the official "
              "inference ports) or 0.0 (the official training code)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _read(path: str, shift: float | None) -> Checkpoint:
    ckpt = read_checkpoint(path)
    if shift is not None:
        ckpt.config = dataclasses.replace(ckpt.config, shift=shift)
    return ckpt


def _load(args: argparse.Namespace, task: str = "auto"):  # type: ignore[no-untyped-def]
    ckpt = _read(args.model, args.shift)
    model = build_model(ckpt, task=task, check_buffers=args.check_buffers).to(_device(args.device))
    return model, ckpt.tokenizer or CharTokenizer()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint: release dir, -hf dir, our dir, Lightning .ckpt or weights file")
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
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _records(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return open_records(args.input, args.format, fasta=args.fasta, seq_column=args.seq_column,
                        id_column=args.id_column)


def cmd_convert(args: argparse.Namespace) -> None:
    ckpt = _read(args.src, args.shift)
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
    model, tok = _load(args)
    summary = embed_to_file(model, tok, _records(args), args.output, pooling=args.pooling,
                            batch_size=args.batch_size, precision=args.precision,
                            shard_size=args.shard_size, progress=not args.no_progress)
    print(f"embedded {summary.n_sequences} sequences (dim {summary.dim}, pooling {args.pooling}) -> "
          + ", ".join(str(f) for f in summary.files))


def cmd_score(args: argparse.Namespace) -> None:
    model, tok = _load(args, task="causal_lm")
    check_records(_records(args)(), tok, model.config.l_max)  # bad records fail before any output
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        out.write("id\tlength\tn_scored\tlog_likelihood\tperplexity\n")
        for s in score_sequences(model, tok, _records(args)(), batch_size=args.batch_size,
                                 precision=args.precision, progress=not args.no_progress):
            out.write(f"{s.name}\t{s.length}\t{s.n_scored}\t{s.log_likelihood:.6g}\t{s.perplexity:.6g}\n")
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_vep(args: argparse.Namespace) -> None:
    model, tok = _load(args, task="causal_lm")
    res = variant_effects(model, tok, args.vcf, args.fasta, window=args.window, reverse_complement=args.rc,
                          batch_size=args.batch_size, precision=args.precision, progress=not args.no_progress)
    skipped = write_vep_tsv(res, args.output)
    n = len(res.scores) + len(res.skipped)
    print(f"scored {len(res.scores)} of {n} VCF alleles/records -> {args.output}")
    if res.skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(res.skip_counts().items()))
        print(f"skipped {len(res.skipped)} ({counts}); details in {skipped}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    model, tok = _load(args, task="causal_lm")
    samples = generate(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_samples=args.num_samples,
                       precision=args.precision, use_cache=not args.no_cache)
    for i, s in enumerate(samples):
        print(f">sample{i}\n{s}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``hyenadna`` command."""
    parser = argparse.ArgumentParser(prog="hyenadna", description="HyenaDNA checkpoints and inference")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a release / Lightning checkpoint into our format")
    p.add_argument("src", help="original or -hf release dir, Lightning .ckpt, or weights file")
    p.add_argument("dst", help="output directory (config.json + model.safetensors + tokenizer.json)")
    p.add_argument("--check-buffers", choices=["error", "warn"], default="error")
    p.add_argument("--shift", type=float, help=SHIFT_HELP)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("embed", help="embeddings of FASTA / CSV / BED sequences")
    _add_model_args(p)
    _add_input_args(p)
    p.add_argument("-o", "--output", required=True,
                   help="out.npy (memory-mapped array + .ids.txt [+ .mask.npy]) or a directory of .pt shards")
    p.add_argument("--pooling", choices=["mean", "last", "none"], default="mean",
                   help="mean/last over real bases, or none for per-position embeddings (default mean)")
    p.add_argument("--shard-size", type=int, default=4096, help="records per .pt shard")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("score", help="log-likelihood and perplexity of each sequence")
    _add_model_args(p)
    _add_input_args(p)
    p.add_argument("-o", "--output", default="-", help="TSV file (default: stdout)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("vep", help="variant effect (LLR alt vs ref) of VCF SNVs")
    _add_model_args(p)
    p.add_argument("--vcf", required=True, help="VCF (plain or gzipped)")
    p.add_argument("--fasta", required=True, help="reference FASTA the VCF refers to")
    p.add_argument("-o", "--output", required=True, help="output TSV; skipped records go to <stem>.skipped.tsv")
    p.add_argument("--window", type=int, default=1024, help="bases around each variant (default 1024, <= l_max)")
    p.add_argument("--rc", action="store_true", help="average the LLR with the reverse-complement strand")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_vep)

    p = sub.add_parser("generate", help="sample continuations of a DNA prompt (FASTA on stdout)")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the full forward for every token (slow exact reference) instead of caching")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyenadna`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, UnsafeCheckpointError) as err:
        print(f"hyenadna {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
