"""Accuracy at a MACs target with the cheap recovery steps of issue 26, each alone and together, before
and after the same short recovery fine-tune (logits only, or + per-block features), with the seconds each
step took, on the shipped CIFAR recipe:

    python benchmarks/recovery_steps.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --targets 0.6 --variants oneshot,lstsq,iterative,iterative+lstsq --distill logits,features \\
        --recover-epochs 1 --recover-images 5000 --eval-images 2000 --csv benchmarks/results/recovery_steps_vit_tiny_cifar10.csv

One run directory per (target, variant); stages that do not change are reused, so the fine-tunes of one
variant share its scoring and cut. A row is appended to the CSV after every configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import appending_csv
from reconstruct_sweep import run  # the shipped CIFAR recipe with overrides, into one run directory

NULL_SHARE = "prune.reconstruct_prefix_share=null"  # the re-fit as it was before the CLS weighting: every token alike
VARIANTS = {"oneshot": ["prune.mode=oneshot", "prune.reconstruct=none"],
            "lstsq": ["prune.mode=oneshot", "prune.reconstruct=lstsq", NULL_SHARE],
            "iterative": ["prune.mode=iterative", "prune.reconstruct=none"],
            "iterative+lstsq": ["prune.mode=iterative", "prune.reconstruct=lstsq", NULL_SHARE],
            # the units chosen for the re-fit (greedy OBS within each block; widths still from activation_taylor)
            "refit_error+lstsq": ["prune.mode=oneshot", "prune.reconstruct=lstsq", NULL_SHARE,
                                  "importance.kind=refit_error"],
            "refit_error+iterative+lstsq": ["prune.mode=iterative", "prune.reconstruct=lstsq", NULL_SHARE,
                                            "importance.kind=refit_error"],
            # no attention branch emptied (a block keeps at least a third of its heads): what the re-fit cannot restore
            "lstsq+attention_kept": ["prune.mode=oneshot", "prune.reconstruct=lstsq", NULL_SHARE,
                                     "prune.max_layer_ratio={ffn: 1.0, heads: 0.67}"],
            "refit_error+lstsq+attention_kept": ["prune.mode=oneshot", "prune.reconstruct=lstsq", NULL_SHARE,
                                                 "importance.kind=refit_error",
                                                 "prune.max_layer_ratio={ffn: 1.0, heads: 0.67}"],
            # the re-fit with the CLS token carrying half of each image's error (the classifier reads only it)
            "lstsq+cls": ["prune.mode=oneshot", "prune.reconstruct=lstsq", "prune.reconstruct_prefix_share=0.5"],
            "iterative+lstsq+cls": ["prune.mode=iterative", "prune.reconstruct=lstsq",
                                    "prune.reconstruct_prefix_share=0.5"],
            "refit_error+lstsq+cls": ["prune.mode=oneshot", "prune.reconstruct=lstsq",
                                      "prune.reconstruct_prefix_share=0.5", "importance.kind=refit_error"],
            "lstsq+cls+attention_kept": ["prune.mode=oneshot", "prune.reconstruct=lstsq",
                                         "prune.reconstruct_prefix_share=0.5",
                                         "prune.max_layer_ratio={ffn: 1.0, heads: 0.67}"],
            # then the classifier re-fitted to the dense logits on 1,024 images (the default since section 14)
            "lstsq+cls+head": ["prune.mode=oneshot", "prune.reconstruct=lstsq", "prune.reconstruct_prefix_share=0.5",
                               "prune.reconstruct_head_images=1024"],
            "iterative+lstsq+cls+head": ["prune.mode=iterative", "prune.reconstruct=lstsq",
                                         "prune.reconstruct_prefix_share=0.5", "prune.reconstruct_head_images=1024"],
            "lstsq+cls+head+attention_kept": ["prune.mode=oneshot", "prune.reconstruct=lstsq",
                                              "prune.reconstruct_prefix_share=0.5", "prune.reconstruct_head_images=1024",
                                              "prune.max_layer_ratio={ffn: 1.0, heads: 0.67}"],
            "blockwise+cls+head": ["prune.mode=oneshot", "prune.reconstruct=blockwise",
                                   "prune.reconstruct_prefix_share=0.5", "prune.reconstruct_head_images=1024"]}
# the variants named without `+head` re-fit the blocks only, as they did when they were first measured
BLOCKS_ONLY = "prune.reconstruct_head_images=0"


def seconds(out: Path, stage: str) -> float | None:
    f = out / stage / "stage.json"
    return round(json.loads(f.read_text())["seconds"], 1) if f.is_file() else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--targets", default="0.6", help="prune.macs_ratio values")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--distill", default="logits,features", help="recovery distillation: logits and/or features")
    p.add_argument("--recover-epochs", type=int, default=1, help="0: one-shot only")
    p.add_argument("--recover-images", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=None, help="test images (default: all)")
    p.add_argument("--csv", required=True)
    p.add_argument("--runs", default="runs/recovery_steps")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="a recipe override for every run (e.g. finetune.lr=1e-3), recorded in the CSV's `sets`")
    p.add_argument("--tag", default="", help="appended to each run directory's name (runs with other --set)")
    args = p.parse_args(argv)
    base = [f"model.name={args.model}", f"data.source={args.data}", "export.enabled=false", "bench.enabled=false",
            f"prune.iterations={args.iterations}"] + ([f"data.eval_images={args.eval_images}"] if args.eval_images else [])
    path = Path(args.csv)
    fields = ["model", "macs_ratio", "variant", "distill", "recover_epochs", "recover_images", "eval_images",
              "dense_top1", "oneshot_top1", "refitted_top1", "finetuned_top1", "importance_s", "reconstruct_s",
              "finetune_s", "sets"]
    with appending_csv(path, fields) as append:
        for t in [float(x) for x in args.targets.split(",")]:
            for variant in args.variants.split(","):
                out = Path(args.runs) / f"macs{t}_{variant}{args.tag}"
                modes = [("none", 0)] + [(d, args.recover_epochs) for d in args.distill.split(",") if args.recover_epochs]
                for distill, epochs in modes:
                    sets = [*base, f"prune.macs_ratio={t}", *VARIANTS[variant],
                            *([] if "+head" in variant else [BLOCKS_ONLY]), f"finetune.epochs={epochs}",
                            f"finetune.train_images={args.recover_images}",
                            f"finetune.distill.features={distill == 'features'}", *args.sets]
                    s = run(out, sets)
                    acc = s["accuracy"]
                    row = {"model": Path(args.model).name, "macs_ratio": t, "variant": variant, "distill": distill,
                           "recover_epochs": epochs, "recover_images": args.recover_images if epochs else 0,
                           "eval_images": acc["dense"]["images"], "dense_top1": acc["dense"]["top1"],
                           "oneshot_top1": acc["pruned"]["top1"], "refitted_top1": acc.get("refitted", {}).get("top1"),
                           "finetuned_top1": acc.get("finetuned", {}).get("top1"),
                           "importance_s": seconds(out, "importance"), "reconstruct_s": seconds(out, "reconstruct"),
                           "finetune_s": seconds(out, "finetune") if epochs else None, "sets": " ".join(args.sets)}
                    append(row)
                    print(row, flush=True)


if __name__ == "__main__":
    main()
