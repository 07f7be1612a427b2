"""Class specialisation: subset top-1 of models pruned for a few classes, per criterion and sparsity.

For random subsets of the classes (sizes and counts from `--subsets`), every criterion prunes the
dense model restricted to the subset's classes (`prune.classes`), calibrated on the subset's
images only, at every ratio; accuracy is measured on the subset's test images, one-shot and after
the same short fine-tune (for `--finetune-configs`). One full run (all classes) is made first; every
specialisation starts from its paths stage (`prune specialize`'s reuse). `--measure cost`, meant
for a quiet machine, times a specialisation from that run against one from scratch (discovery
included) and measures params, MACs and onnxruntime latency of every config and ratio.
Accuracy rows are written after every configuration (`--resume` continues an interrupted sweep).

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

from common import read_csv, write_csv

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
    ap.add_argument("--finetune-configs", default="path_attribution_global,taylor,magnitude_l1",
                    help="configs that also get the short fine-tune")
    ap.add_argument("--measure", default="accuracy,cost",
                    help="accuracy (any machine) and/or cost (timing and latency: run it on a quiet machine)")
    ap.add_argument("--resume", action="store_true", help="keep the accuracy rows already in --out")
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
            "export": {"enabled": deploy}, "bench": {"enabled": deploy, "batch_sizes": [1, 32],
                                                      "repeats": 3 if args.quick else 30, "pytorch": False},
        })

    quiet = dict(progress=False, log=lambda m: None)
    full = out / "full"
    Pipeline(recipe(deploy=False), full, update=True, **quiet).run()  # every class: the run to specialise from
    measures = args.measure.split(",")
    if "accuracy" in measures:
        accuracy(args, subsets, recipe, out, full, quiet)
    if "cost" in measures:
        cost(args, subsets, recipe, out, full, quiet)
    print(f"wrote {out}/specialize.csv and specialize.json")


def specialised_dir(out: Path, full: Path, name: str) -> Path:
    """A run directory that starts from the full run's paths stage (what `prune specialize` does)."""
    d = out / name
    if not (d / "paths").exists() and (full / "paths").exists():
        d.mkdir(parents=True, exist_ok=True)
        shutil.copytree(full / "paths", d / "paths")
        (d / "recipe.yaml").write_text((full / "recipe.yaml").read_text())
    return d


def accuracy(args, subsets, recipe, out: Path, full: Path, quiet: dict) -> None:
    """Subset top-1, one-shot for every config and after the short fine-tune for `--finetune-configs`."""
    from prune.pipeline import Pipeline

    rows, done = read_rows(out / "specialize.csv") if args.resume else ([], set())
    finetuned = set(args.finetune_configs.split(","))
    for subset in subsets:
        tag = "-".join(map(str, subset))
        for name in args.configs.split(","):
            kind, scope = CONFIGS[name]
            for ratio in map(float, args.ratios.split(",")):
                if (tag, name, str(ratio)) in done:
                    continue
                epochs = args.finetune_epochs if name in finetuned else 0
                s = Pipeline(recipe(subset, kind, scope, ratio, epochs, deploy=False),
                             specialised_dir(out, full, f"sub_{tag}"), update=True, **quiet).run()
                acc = s["accuracy"]
                row = {"classes": tag, "size": len(subset), "config": name, "kind": kind, "prune_scope": scope,
                       "ratio": ratio, "dense_top1": acc["dense"]["top1"], "top1": acc["pruned"]["top1"],
                       "finetuned_top1": acc.get("finetuned", {}).get("top1", ""), "images": acc["pruned"]["images"],
                       "macs_ratio": s["macs"]["pruned"] / s["macs"]["dense"],
                       "widths": " ".join(map(str, s["ffn_widths"]["pruned"]))}
                rows.append(row)
                print(f"classes {tag:12s} {name:24s} ratio {ratio:.2f}  dense {row['dense_top1']:.4f}  "
                      f"pruned {row['top1']:.4f}  fine-tuned {row['finetuned_top1']}", flush=True)
                write_rows(out / "specialize.csv", rows)


def cost(args, subsets, recipe, out: Path, full: Path, quiet: dict) -> None:
    """On a quiet machine: time to specialise from the full run vs from scratch (first subset of each size),
    and params, MACs and onnxruntime latency of every config and ratio (first subset)."""
    from prune.pipeline import Pipeline

    rows = []
    firsts = {len(s): s for s in reversed(subsets)}
    for size, subset in sorted(firsts.items()):
        tag = "-".join(map(str, subset))
        seconds = {}
        for how in ("from_run", "from_scratch"):
            d = out / f"time_{how}_{tag}"
            shutil.rmtree(d, ignore_errors=True)
            if how == "from_run":
                specialised_dir(out, full, d.name)
            start = time.perf_counter()
            Pipeline(recipe(subset, deploy=False), d, update=True, **quiet).run()
            seconds[how] = time.perf_counter() - start
        rows.append({"what": "specialise_seconds", "classes": tag, "size": size, **seconds})
        print(f"specialise {tag}: {seconds['from_run']:.1f} s from the full run, {seconds['from_scratch']:.1f} s "
              "from scratch", flush=True)
    subset = subsets[0]
    tag = "-".join(map(str, subset))
    for name in args.configs.split(","):
        kind, scope = CONFIGS[name]
        for ratio in map(float, args.ratios.split(",")):
            s = Pipeline(recipe(subset, kind, scope, ratio, 0, deploy=True),
                         specialised_dir(out, full, f"cost_{tag}"), update=True, **quiet).run()
            lat = s["latency"]["onnxruntime"]
            rows.append({"what": "deploy", "classes": tag, "size": len(subset), "config": name, "ratio": ratio,
                         "params_dense": s["params"]["dense"], "params": s["params"]["pruned"],
                         "macs_dense": s["macs"]["dense"], "macs": s["macs"]["pruned"],
                         "ort_b1_ms_dense": lat["dense"]["1"]["median_ms"], "ort_b1_ms": lat["pruned"]["1"]["median_ms"],
                         "ort_b32_ms_dense": lat["dense"]["32"]["median_ms"],
                         "ort_b32_ms": lat["pruned"]["32"]["median_ms"]})
            print(f"{name:24s} ratio {ratio:.2f}: MACs {s['macs']['pruned'] / s['macs']['dense']:.3f} of dense, "
                  f"onnxruntime b1 {lat['dense']['1']['median_ms']:.2f} -> {lat['pruned']['1']['median_ms']:.2f} ms",
                  flush=True)
    write_json_rows(out / "cost.json", rows)


def read_rows(path: Path) -> tuple[list[dict], set]:
    if not path.is_file():
        return [], set()
    rows = read_csv(path)
    print(f"resuming: {len(rows)} configurations already measured in {path}")
    return rows, {(r["classes"], r["config"], r["ratio"]) for r in rows}


def write_rows(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, list(rows[0]))
    write_json_rows(path.with_suffix(".json"), rows)


def write_json_rows(path: Path, rows: list[dict]) -> None:
    from prune.io import write_json

    write_json(path, rows)


if __name__ == "__main__":
    main()
