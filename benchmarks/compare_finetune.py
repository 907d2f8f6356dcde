"""Test accuracy of soft prompt, linear probe, full finetuning and the same model from scratch.

On the shipped species task (data/species), from one pretrained checkpoint; every run is
`hyenadna.finetune.fit` on `configs/finetune/finetune.yaml` with the same seed, data and epochs:

    python benchmarks/compare_finetune.py --pretrained outputs/default/<run>/checkpoints/last.ckpt
    python benchmarks/compare_finetune.py --pretrained <ckpt> --epochs 10 --seeds 1 2 3 \
        --only "full finetune" "scratch (full, random init)"

Without --pretrained it first pretrains with finetune.yaml's `pretrain_overrides` (what a
plain `python finetune.py` does). Prints a table and writes compare_finetune.json in --out.

--sweep: the soft-prompt length sweep on a model with room for long prompts (l_max 1026,
`python train.py experiment=species_1k`): both soft-prompt variants at each --prompt-lengths
(0 tokens: the linear probe for the head variant, the untrained label-token read-out, i.e. 0-shot,
for the other), beside linear probe, full finetuning and from-scratch, each for every --seeds;
writes prompt_sweep.csv (one row per run) and prompt_sweep.png (test accuracy vs prompt tokens,
the probe and full finetuning as horizontal references, k-mer logistic regression as the floor):

    python benchmarks/compare_finetune.py --sweep --pretrained outputs/species_1k/<run>/checkpoints/last.ckpt \
        --epochs 3 --seeds 1 2 3 --out benchmarks/results/prompt_sweep
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from hyenadna.finetune import REPO_ROOT, fit, quick_pretrain

# (row name, overrides); `scratch` is full finetuning of the same architecture from random init.
RUNS: dict[str, list[str]] = {
    "soft prompt (head)": ["method=soft_prompt"],
    "soft prompt (label tokens)": ["method=soft_prompt_token"],
    "linear probe": ["method=linear_probe"],
    "full finetune": ["method=full"],
    "scratch (full, random init)": ["method=full", "pretrained=scratch"],
}


def main() -> None:
    """Run every method and print test accuracy / MCC / macro F1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default=None, help="checkpoint to adapt (default: pretrain one first)")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare_finetune"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="a subset of the row names")
    parser.add_argument("--override", nargs="*", default=[], help="extra finetune.py overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2222],
                        help="finetuning seeds (head init, batch order); several give mean and spread")
    parser.add_argument("--sweep", action="store_true", help="the soft-prompt length sweep (CSV + PNG)")
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[0, 16, 64, 256, 512, 768])
    parser.add_argument("--prompt-seeds", type=int, nargs="+", default=None,
                        help="seeds for the soft-prompt runs of the sweep (default: --seeds)")
    parser.add_argument("--no-references", action="store_true",
                        help="sweep: only the soft-prompt runs (probe, full, scratch run elsewhere; merge the CSVs)")
    parser.add_argument("--plot-only", action="store_true",
                        help="sweep: no runs, only the table and PNG from --out/prompt_sweep.csv (e.g. merged from several)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        if args.plot_only:
            table = sweep_table(args.out / "prompt_sweep.csv")
            plot_sweep(table, args.out / "prompt_sweep.png", f"species task (256 bp, 5 classes), {args.epochs} epochs")
            print(format_sweep(table))
            return
        if not args.pretrained:
            raise SystemExit("--sweep needs --pretrained (a model with room for long prompts: "
                             "python train.py experiment=species_1k)")
        sweep(args)
        return
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs" / "finetune"), version_base="1.3"):
        base = compose(config_name="finetune", overrides=[f"output_dir={args.out}"])
        pretrained = args.pretrained or quick_pretrain(list(base.pretrain_overrides), args.out / "pretrain")
        from hyenadna.checkpoint import load_pretrained

        arch = load_pretrained(pretrained, task="causal_lm").config
        # The scratch model gets exactly the pretrained architecture.
        model_overrides = [f"++model.{k}={arch.to_dict()[k]}" for k in ("d_model", "n_layer", "d_inner", "l_max")]
        results: dict[str, dict] = {}
        for name, overrides in RUNS.items():
            if args.only and name not in args.only:
                continue
            slug = name.split(" (")[0].replace(" ", "_") + ("_tokens" if "tokens" in name else "")
            if any(o.startswith("method=soft_prompt") for o in overrides) and arch.l_max - 16 < 257:
                # 16 prompt tokens beside 256 bp (+[SEP]) need l_max 273: crop the fragments instead
                overrides = [*overrides, f"task.max_length={arch.l_max - 16}"]
            runs = []
            for seed in args.seeds:
                cfg = compose(config_name="finetune", overrides=[
                    f"pretrained={pretrained}", f"trainer.max_epochs={args.epochs}", "logger=none",
                    "trainer.enable_progress_bar=false", f"seed={seed}",
                    f"output_dir={args.out / slug / f'seed{seed}'}", *model_overrides, *overrides, *args.override])
                start = time.perf_counter()
                r = fit(cfg)
                runs.append({**r["test"], "seed": seed, "trainable_parameters": r["trainable_parameters"],
                             "epochs": r["epochs"], "wall_s": time.perf_counter() - start})
            results[name] = {"runs": runs, **{m: summary([run[m] for run in runs]) for m in ("acc", "mcc", "f1")},
                             "trainable_parameters": runs[0]["trainable_parameters"],
                             "wall_s": sum(run["wall_s"] for run in runs) / len(runs)}
            (args.out / "compare_finetune.json").write_text(json.dumps(
                {"pretrained": str(pretrained), "epochs": args.epochs, "seeds": args.seeds, "results": results},
                indent=2))
    seeds = f"seed {args.seeds[0]}" if len(args.seeds) == 1 else f"mean ± std over seeds {args.seeds}"
    print(f"\nspecies task (5 classes, 1000 test fragments of 256 bp), {args.epochs} epochs, {seeds}, "
          f"pretrained={pretrained}")
    print("| method | trainable params | test acc | test MCC | test macro-F1 | wall per run (s) |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['trainable_parameters']:,} | {fmt(r['acc'])} | {fmt(r['mcc'])} | {fmt(r['f1'])} | "
              f"{r['wall_s']:.0f} |")


SWEEP_FIELDS = ["method", "prompt_tokens", "seed", "test_acc", "test_mcc", "test_f1", "trainable_parameters",
                "epochs", "wall_s"]


def sweep(args: argparse.Namespace) -> None:
    """Every run of the prompt-length sweep, appended to prompt_sweep.csv as it ends; then the plot."""
    csv_path = args.out / "prompt_sweep.csv"
    done = set()
    if csv_path.is_file():  # a rerun continues where the last one stopped
        with open(csv_path, newline="") as f:
            done = {(r["method"], int(r["prompt_tokens"]), int(r["seed"])) for r in csv.DictReader(f)}
    else:
        with open(csv_path, "w", newline="") as f:
            csv.DictWriter(f, SWEEP_FIELDS).writeheader()
    from hyenadna.checkpoint import load_pretrained

    arch = load_pretrained(args.pretrained, task="causal_lm").config
    model_overrides = [f"++model.{k}={arch.to_dict()[k]}" for k in ("d_model", "n_layer", "d_inner", "l_max")]
    prompt_seeds = args.prompt_seeds or args.seeds
    plan: list[tuple[str, int, int, list[str]]] = []
    for seed in [] if args.no_references else args.seeds:
        # the probe also gives the k-mer floor (same examples) and the 0-token label read-out (0-shot)
        plan.append(("linear probe", 0, seed, ["method=linear_probe", "icl_shots=[0]"]))
        plan.append(("full finetune", 0, seed, ["method=full", "baseline.kmer_sizes=[]"]))
        plan.append(("scratch", 0, seed, ["method=full", "pretrained=scratch", "baseline.kmer_sizes=[]"]))
    for n in [n for n in args.prompt_lengths if n > 0]:
        for seed in prompt_seeds:
            for name, method in (("soft prompt (head)", "soft_prompt"), ("soft prompt (label tokens)", "soft_prompt_token")):
                plan.append((name, n, seed, [f"method={method}", f"method.n_soft_tokens={n}", "baseline.kmer_sizes=[]"]))
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs" / "finetune"), version_base="1.3"):
        for name, n, seed, overrides in plan:
            if (name, n, seed) in done:
                continue
            slug = f"{name.split(' (')[0].replace(' ', '_')}{'_tokens' if 'tokens' in name else ''}_{n}_seed{seed}"
            cfg = compose(config_name="finetune", overrides=[
                f"pretrained={args.pretrained}", f"trainer.max_epochs={args.epochs}", "logger=none",
                "trainer.enable_progress_bar=false", f"seed={seed}", f"output_dir={args.out / 'runs' / slug}",
                *model_overrides, *overrides, *args.override])
            start = time.perf_counter()
            r = fit(cfg)
            rows = [{"method": name, "prompt_tokens": n, "seed": seed, "test_acc": r["test"]["acc"],
                     "test_mcc": r["test"]["mcc"], "test_f1": r["test"]["f1"],
                     "trainable_parameters": r["trainable_parameters"], "epochs": r["epochs"],
                     "wall_s": round(time.perf_counter() - start, 1)}]
            if "kmer_baseline_acc" in r:
                rows.append({**dict.fromkeys(SWEEP_FIELDS, ""), "method": "k-mer logistic regression",
                             "prompt_tokens": 0, "seed": seed, "test_acc": r["kmer_baseline_acc"]})
            for icl in r.get("icl", []):  # the label-token read-out with no prompt and nothing trained
                rows.append({**dict.fromkeys(SWEEP_FIELDS, ""), "method": "soft prompt (label tokens)",
                             "prompt_tokens": 0, "seed": seed, "test_acc": icl["accuracy"], "trainable_parameters": 0})
            with open(csv_path, "a", newline="") as f:
                csv.DictWriter(f, SWEEP_FIELDS).writerows(rows)
    table = sweep_table(csv_path)
    plot_sweep(table, args.out / "prompt_sweep.png",
               f"species task (256 bp, 5 classes), {args.epochs} epochs, pretrained l_max {arch.l_max}")
    print(format_sweep(table))
    print(f"{csv_path}\n{args.out / 'prompt_sweep.png'}")


def sweep_table(csv_path: Path) -> dict[str, dict[int, list[float]]]:
    """method -> prompt tokens -> test accuracies (one per seed)."""
    table: dict[str, dict[int, list[float]]] = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            table.setdefault(r["method"], {}).setdefault(int(r["prompt_tokens"]), []).append(float(r["test_acc"]))
    if "linear probe" in table:  # a 0-token soft prompt with a head is the linear probe
        table.setdefault("soft prompt (head)", {})[0] = table["linear probe"][0]
    return table


def format_sweep(table: dict[str, dict[int, list[float]]]) -> str:
    """Markdown: one row per method, one column per prompt length; mean ± std (n seeds)."""
    lengths = sorted({n for row in table.values() for n in row})
    lines = ["| method | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for name, row in table.items():
        cells = [fmt(summary(row[n])) + (f" (n={len(row[n])})" if len(row[n]) > 1 else "") if n in row else ""
                 for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(table: dict[str, dict[int, list[float]]], png: Path, title: str) -> None:
    """Test accuracy against prompt tokens: a line per soft-prompt variant (mean, std bars), the
    probe, full finetuning, scratch and the k-mer floor as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({n for name in table if name.startswith("soft prompt") for n in table[name]})
    x = {n: i for i, n in enumerate(lengths)}  # evenly spaced: 0 and 16 stay apart from 768
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, name in enumerate(sorted(n for n in table if n.startswith("soft prompt"))):
        pts = sorted(table[name].items())
        ax.errorbar([x[n] for n, _ in pts], [statistics.fmean(v) for _, v in pts],
                    yerr=[summary(v)["std"] for _, v in pts], fmt="o-", capsize=3, label=name, color=f"C{i}")
    refs = (("full finetune", "C2", "--"), ("linear probe", "C3", "--"), ("scratch", "C4", ":"),
            ("k-mer logistic regression", "grey", ":"))
    for name, color, ls in refs:
        if name in table:
            acc = statistics.fmean(v for vals in table[name].values() for v in vals)
            label = {"scratch": "full, from scratch", "k-mer logistic regression": "k-mer (3-6) logistic regression"}
            ax.axhline(acc, color=color, ls=ls, label=f"{label.get(name, name)} ({acc:.3f})")
    ax.axhline(0.2, color="black", lw=0.5, alpha=0.4)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("soft-prompt tokens")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def summary(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt(s: dict[str, float]) -> str:
    """0.812 for one run, 0.812 ± 0.006 for several."""
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] else "")


if __name__ == "__main__":
    main()
