"""Class specialisation: subset top-1 of models pruned for a few classes, per criterion and sparsity.

For random subsets of the classes (sizes and counts from `--subsets`), every criterion prunes the
dense model restricted to the subset's classes (`prune.classes`), calibrated on the subset's
images only, at every ratio; accuracy is measured on the subset's test images, one-shot and after
the same short fine-tune. One full run (all classes) is made first; every specialisation starts
from its paths stage (`prune specialize`'s reuse), and its time is compared with a from-scratch
run of the same subset (discovery included). Rows are written after every configuration.

    python benchmarks/specialize_sweep.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --out runs/specialize
    python benchmarks/specialize_sweep.py --quick     # embedded digits model (the CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

# name -> importance kind, block budgets
CONFIGS = {
    "path_attribution_global": ("path_attribution", "global"),
    "path_frequency": ("path_frequency", "uniform"),
    "taylor": ("taylor", "uniform"),
    "taylor_global": ("taylor", "global"),
    "magnitude_l1": ("magnitude_l1", "uniform"),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--subsets", default="2:3,5:3", help="SIZE:COUNT,... random class subsets (seeded)")
    ap.add_argument("--ratios", default="0.5,0.7,0.9")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="draws the subsets")
    ap.add_argument("--out", default="runs/specialize")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from prune.models import load_model
    from prune.pipeline import Pipeline
    from prune.recipe import Recipe

    steps = 20
    if args.quick:
        args.subsets, args.ratios, args.images_per_class, args.calibration_images = "2:1", "0.9", 2, 32
        args.finetune_images, args.top_k, steps = 32, 5, 2
    num_classes = load_model(args.model, pretrained=False)[0].num_classes
    rng = random.Random(args.seed)
    subsets = [sorted(rng.sample(range(num_classes), int(size)))
               for size, count in (s.split(":") for s in args.subsets.split(",")) for _ in range(int(count))]
    out = Path(args.out)

    def recipe(classes=None, kind="path_frequency", scope="uniform", ratio=0.5, finetune=0, deploy=True):
        return Recipe.model_validate({
            "name": "specialize",
            "model": {"name": args.model},
            "data": {"source": args.data, "batch_size": 256},
            "paths": {"images_per_class": args.images_per_class, "top_k": args.top_k, "scope": "tokens", "steps": steps},
            "importance": {"kind": kind, "calibration_images": args.calibration_images},
            "prune": {"ratio": ratio, "scope": scope, "max_layer_ratio": max(0.9, min(0.98, ratio + 0.05)),
                      "classes": classes},
            "finetune": {"epochs": finetune, "train_images": args.finetune_images, "batch_size": 128, "lr": 5e-4,
                         "distill": {"alpha": 0.5, "temperature": 2.0}},
            "export": {"enabled": deploy}, "bench": {"enabled": deploy, "batch_sizes": [1], "repeats": 20,
                                                      "pytorch": False},
        })

    quiet = dict(progress=False, log=lambda m: None)
    full = out / "full"
    start = time.perf_counter()
    Pipeline(recipe(deploy=False), full, update=True, **quiet).run()
    full_seconds = time.perf_counter() - start
    rows = []
    for subset in subsets:
        tag = "-".join(map(str, subset))
        # time: from the full run's paths (what `prune specialize` does) vs from scratch (discovery included)
        timing = {}
        for how in ("from_run", "from_scratch"):
            d = out / f"time_{how}_{tag}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            if how == "from_run":
                shutil.copytree(full / "paths", d / "paths")
                (d / "recipe.yaml").write_text((full / "recipe.yaml").read_text())
            t = time.perf_counter()
            Pipeline(recipe(subset, deploy=False), d, update=True, **quiet).run()
            timing[how] = time.perf_counter() - t
        for name in args.configs.split(","):
            kind, scope = CONFIGS[name]
            for ratio in map(float, args.ratios.split(",")):
                run_dir = out / f"sub_{tag}"
                if not (run_dir / "paths").exists() and (full / "paths").exists():
                    run_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(full / "paths", run_dir / "paths")
                    (run_dir / "recipe.yaml").write_text((full / "recipe.yaml").read_text())
                s = Pipeline(recipe(subset, kind, scope, ratio, args.finetune_epochs), run_dir, update=True, **quiet).run()
                acc, lat = s["accuracy"], s.get("latency", {}).get("onnxruntime", {})
                row = {"classes": tag, "size": len(subset), "config": name, "kind": kind, "prune_scope": scope,
                       "ratio": ratio, "dense_top1": acc["dense"]["top1"], "top1": acc["pruned"]["top1"],
                       "finetuned_top1": acc.get("finetuned", {}).get("top1", ""), "images": acc["pruned"]["images"],
                       "params_dense": s["params"]["dense"], "params": s["params"]["pruned"],
                       "macs_dense": s["macs"]["dense"], "macs": s["macs"]["pruned"],
                       "ort_b1_ms_dense": lat.get("dense", {}).get("1", {}).get("median_ms", ""),
                       "ort_b1_ms": lat.get("pruned", {}).get("1", {}).get("median_ms", ""),
                       "seconds_from_run": timing["from_run"], "seconds_from_scratch": timing["from_scratch"],
                       "full_run_seconds": full_seconds, "widths": " ".join(map(str, s["ffn_widths"]["pruned"]))}
                rows.append(row)
                print(f"classes {tag:12s} {name:24s} ratio {ratio:.2f}  dense {row['dense_top1']:.4f}  "
                      f"pruned {row['top1']:.4f}  fine-tuned {row['finetuned_top1']}", flush=True)
                write_rows(out, rows)
    print(f"wrote {out}/specialize.csv and specialize.json")


def write_rows(out: Path, rows: list[dict]) -> None:
    import csv

    from prune.io import atomic_path, write_json

    with atomic_path(out / "specialize.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_json(out / "specialize.json", rows)


if __name__ == "__main__":
    main()
