"""Test accuracy of soft prompt, linear probe, full finetuning and the same model from scratch.

On the shipped species task (data/species), from one pretrained checkpoint; every run is
`hyenadna.finetune.fit` on `configs/finetune/finetune.yaml` with the same seed, data and epochs:

    python benchmarks/compare_finetune.py --pretrained outputs/default/<run>/checkpoints/last.ckpt
    python benchmarks/compare_finetune.py --pretrained <ckpt> --epochs 10 --seeds 1 2 3 \
        --only "full finetune" "scratch (full, random init)"

Without --pretrained it first pretrains with finetune.yaml's `pretrain_overrides` (what a
plain `python finetune.py` does). Prints a table and writes compare_finetune.json in --out.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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


def summary(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt(s: dict[str, float]) -> str:
    """0.812 for one run, 0.812 ± 0.006 for several."""
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] else "")


if __name__ == "__main__":
    main()
