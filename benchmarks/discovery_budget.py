"""How much path discovery does pruning need? One-shot accuracy at a fixed ratio against the number of
images per class and against top-K, with the measured discovery time and peak memory of each.

Every setting discovers its own paths (nothing is subsampled), prunes with one path criterion and
evaluates; calibration images, ratio and evaluation set are the same for all. Time the runs on a
quiet machine: discovery seconds are wall time.

    python benchmarks/discovery_budget.py --model ../shared/models/vit_tiny_cifar10 \
        --data ../shared/data/cifar10 --out runs/discovery_budget \
        --json benchmarks/results/discovery_budget_vit_tiny_cifar10.json
    python benchmarks/discovery_budget.py --quick   # embedded digits model (the CI smoke test)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def settings(images_per_class: list[int], top_ks: list[int], anchor_ipc: int, anchor_k: int) -> list[tuple[int, int]]:
    """The images-per-class sweep at the anchor top-K, then the top-K sweep at the anchor image count."""
    grid = [(n, anchor_k) for n in images_per_class]
    return grid + [(anchor_ipc, k) for k in top_ks if (anchor_ipc, k) not in grid]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--images-per-class", default="1,2,5,10,20")
    ap.add_argument("--top-k", default="1,5,10,20")
    ap.add_argument("--anchor-images-per-class", type=int, default=10, help="images per class of the top-K sweep")
    ap.add_argument("--anchor-top-k", type=int, default=5, help="top-K of the images-per-class sweep")
    ap.add_argument("--kind", default="path_frequency")
    ap.add_argument("--scope", default="tokens", choices=["auto", "cls", "tokens"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/discovery_budget")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = ap.parse_args(argv)

    from prune.pipeline import Pipeline
    from prune.recipe import Recipe

    if args.quick:
        args.images_per_class, args.top_k, args.anchor_images_per_class, args.anchor_top_k = "1,2", "1,2", 1, 1
        args.steps, args.calibration_images, args.eval_images = 2, 32, 60
    grid = settings([int(n) for n in args.images_per_class.split(",")], [int(k) for k in args.top_k.split(",")],
                    args.anchor_images_per_class, args.anchor_top_k)
    rows = []
    for ipc, k in grid:
        recipe = Recipe.model_validate({
            "name": "discovery_budget",
            "model": {"name": args.model},
            "data": {"source": args.data, "eval_images": args.eval_images, "batch_size": 256},
            "paths": {"images_per_class": ipc, "top_k": k, "scope": args.scope, "steps": args.steps, "seed": args.seed},
            "importance": {"kind": args.kind, "calibration_images": args.calibration_images, "seed": args.seed},
            "prune": {"ratio": args.ratio},
            "finetune": {"epochs": 0}, "export": {"enabled": False}, "bench": {"enabled": False},
        })
        s = Pipeline(recipe, args.out, update=True, progress=False, log=lambda m: None).run()
        p = s["paths"]
        row = {"images_per_class": ipc, "top_k": k, "images": p["images"], "discovery_s": p["seconds"],
               "images_per_s": p["images_per_second"], "peak_rss_mb": p["peak_memory"]["host_rss_mb"],
               "top1": s["accuracy"]["pruned"]["top1"], "dense_top1": s["accuracy"]["dense"]["top1"]}
        rows.append(row)
        print(f"{ipc:3d} img/class top-{k:<3d} {row['images']:5d} images  discovery {row['discovery_s']:7.1f}s "
              f"peak RSS {row['peak_rss_mb']:7.0f} MB  top1 {row['top1']:.4f}", flush=True)
    res = {"model": args.model, "data": args.data, "kind": args.kind, "scope": args.scope, "ratio": args.ratio,
           "steps": args.steps, "anchor_images_per_class": args.anchor_images_per_class,
           "anchor_top_k": args.anchor_top_k, "calibration_images": args.calibration_images, "seed": args.seed,
           "dense_top1": rows[0]["dense_top1"], "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
