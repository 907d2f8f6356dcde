"""Test accuracy of soft prompt, linear probe, full finetuning and the same model from scratch.

On the shipped species task (data/species), from one pretrained checkpoint; every run is
`hyenadna.finetune.fit` on `configs/finetune.yaml` with the same seed, data and epochs:

    python benchmarks/compare_finetune.py --pretrained outputs/default/<run>/checkpoints/last.ckpt

Without --pretrained it first pretrains with finetune.yaml's `pretrain_overrides` (what a
plain `python finetune.py` does). Prints a table and writes compare_finetune.json in --out.
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
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
            cfg = compose(config_name="finetune", overrides=[
                f"pretrained={pretrained}", f"trainer.max_epochs={args.epochs}", "logger=none",
                "trainer.enable_progress_bar=false", f"output_dir={args.out / slug}", *model_overrides,
                *overrides, *args.override])
            start = time.perf_counter()
            r = fit(cfg)
            results[name] = {**r["test"], "trainable_parameters": r["trainable_parameters"],
                             "epochs": r["epochs"], "wall_s": time.perf_counter() - start}
            (args.out / "compare_finetune.json").write_text(json.dumps(
                {"pretrained": str(pretrained), "epochs": args.epochs, "results": results}, indent=2))
    print(f"\nspecies task (5 classes, 1000 test fragments of 256 bp), {args.epochs} epochs, pretrained={pretrained}")
    print(f"| method | trainable params | test acc | test MCC | test macro-F1 | wall (s) |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['trainable_parameters']:,} | {r['acc']:.3f} | {r['mcc']:.3f} | {r['f1']:.3f} | "
              f"{r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
