"""One-shot accuracy of every importance kind, with and without mean compensation, at given ratios.

All runs share one run directory, so the path discovery, the dense accuracy and each criterion's
importance table are computed once and reused (`--update`); only pruning and evaluation rerun.
Same calibration images and path images for every criterion.

    python benchmarks/criteria_sweep.py --model ../shared/models/vit_tiny_cifar10 \
        --data ../shared/data/cifar10 --ratios 0.5 --out runs/sweep_cifar
    python benchmarks/criteria_sweep.py --quick   # embedded digits model, seconds (the CI smoke test)
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--ratios", default="0.5", help="comma-separated FFN pruning ratios")
    ap.add_argument("--kinds", default=None, help="comma-separated importance kinds (default: all)")
    ap.add_argument("--compensate", default="none,mean", help="comma-separated: none, mean")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--scope", default="auto", choices=["auto", "cls", "tokens"])
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/criteria_sweep")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = ap.parse_args(argv)

    from prune.importance import CRITERIA
    from prune.pipeline import Pipeline
    from prune.recipe import Recipe

    if args.quick:
        args.images_per_class, args.calibration_images, args.eval_images = 2, 64, 100
    kinds = args.kinds.split(",") if args.kinds else list(CRITERIA)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for kind in kinds:
            for comp in args.compensate.split(","):
                recipe = Recipe.model_validate({
                    "name": "criteria_sweep",
                    "model": {"name": args.model},
                    "data": {"source": args.data, "eval_images": args.eval_images, "batch_size": 256},
                    "paths": {"images_per_class": args.images_per_class, "top_k": args.top_k, "scope": args.scope,
                              "steps": 3 if args.quick else 20, "seed": args.seed},
                    "importance": {"kind": kind, "calibration_images": args.calibration_images, "seed": args.seed},
                    "prune": {"ratio": ratio, "compensate": comp},
                    "finetune": {"epochs": 0}, "export": {"enabled": False}, "bench": {"enabled": False},
                })
                s = Pipeline(recipe, args.out, update=True, progress=False, log=lambda m: None).run()
                row = {"ratio": ratio, "kind": kind, "compensate": comp,
                       "top1": s["accuracy"]["pruned"]["top1"], "top5": s["accuracy"]["pruned"]["top5"],
                       "dense_top1": s["accuracy"]["dense"]["top1"], "images": s["accuracy"]["pruned"]["images"],
                       "macs_ratio": s["macs"]["pruned"] / s["macs"]["dense"]}
                rows.append(row)
                print(f"ratio {ratio:.2f}  {kind:20s} compensate={comp:4s}  top1 {row['top1']:.4f} "
                      f"(dense {row['dense_top1']:.4f})", flush=True)
    out = Path(args.out)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}/sweep.csv and sweep.json")


if __name__ == "__main__":
    main()
