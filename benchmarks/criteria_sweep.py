"""One-shot accuracy of every importance kind, with and without mean compensation, at given ratios.

All runs share one run directory, so the path discovery, the dense accuracy and each criterion's
importance table are computed once and reused (`--update`); only pruning and evaluation rerun.
Same calibration images and path images for every criterion. `--seeds` repeats the sampling of the
path and calibration images (and the random scores) with other seeds; magnitude criteria without
compensation do not sample anything and run once. `--finetune-epochs` adds the same short recovery
fine-tune (distillation from the dense model, fixed fine-tune seed) to every configuration.
`--prune-scopes uniform,global` and `--modes oneshot,progressive` add block-budget allocation and
layer-progressive scoring (progressive runs only the criteria that support it).

    python benchmarks/criteria_sweep.py --model ../shared/models/vit_tiny_cifar10 \
        --data ../shared/data/cifar10 --ratios 0.5 --out runs/sweep_cifar
    python benchmarks/criteria_sweep.py ... --seeds 0,1,2 --compensate none --out runs/sweep_seeds
    python benchmarks/criteria_sweep.py ... --kinds taylor,random --finetune-epochs 1 --finetune-images 5000
    python benchmarks/criteria_sweep.py --quick   # embedded digits model, seconds (the CI smoke test)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import read_csv, write_csv


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--ratios", default="0.5", help="comma-separated FFN pruning ratios")
    ap.add_argument("--kinds", default=None, help="comma-separated importance kinds (default: all)")
    ap.add_argument("--compensate", default="none,mean", help="comma-separated: none, mean")
    ap.add_argument("--prune-scopes", default="uniform", help="comma-separated block budgets: uniform, global")
    ap.add_argument("--modes", default="oneshot", help="comma-separated: oneshot, progressive")
    ap.add_argument("--budget-kind", default=None,
                    help="with --prune-scopes global: this criterion's scores set the block widths")
    ap.add_argument("--objective", default="logprob", choices=["logprob", "prob"],
                    help="what path_attribution / activation_taylor attribute")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--scope", default="auto", choices=["auto", "cls", "tokens"])
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of image sampling (paths, calibration)")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="recovery fine-tune after pruning (0: none)")
    ap.add_argument("--finetune-images", type=int, default=5000)
    ap.add_argument("--out", default="runs/criteria_sweep")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an earlier, interrupted sweep in --out and run only the missing ones")
    args = ap.parse_args(argv)

    from prune.criteria import CRITERIA
    from prune.pipeline import Pipeline
    from prune.recipe import Recipe

    if args.quick:
        args.images_per_class, args.calibration_images, args.eval_images = 2, 64, 100
        args.finetune_images = min(args.finetune_images, 64)
    kinds = args.kinds.split(",") if args.kinds else list(CRITERIA)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    done = set()
    if args.resume and (Path(args.out) / "sweep.csv").is_file():  # an interrupted sweep: keep its rows
        rows = read_csv(Path(args.out) / "sweep.csv")
        done = {_key(r) for r in rows}
        print(f"resuming: {len(rows)} configurations already measured in {args.out}/sweep.csv")
    # seed outermost: a run directory keeps one version of each stage, so this order runs the path
    # discovery once per seed and the importance once per (seed, kind)
    for seed, kind, ratio, comp, pscope, mode in (
            (s, k, r, c, ps, md) for s in seeds for k in kinds for r in map(float, args.ratios.split(","))
            for c in args.compensate.split(",") for ps in args.prune_scopes.split(",") for md in args.modes.split(",")):
        if seed != seeds[0] and kind.startswith("magnitude") and comp == "none":
            continue  # nothing sampled: every seed gives the same model
        if mode == "progressive" and not CRITERIA[kind].progressive:
            continue
        uses_paths = CRITERIA[kind].needs_paths
        config = {"ratio": ratio, "kind": kind, "scope": args.scope if uses_paths else "",  # the CSV's first columns
                  "top_k": args.top_k if uses_paths else "", "compensate": comp, "seed": seed, "prune_scope": pscope,
                  "mode": mode, "budget_kind": (args.budget_kind or "") if pscope == "global" else ""}
        if _key(config) in done:
            continue
        recipe = Recipe.model_validate({
            "name": "criteria_sweep",
            "model": {"name": args.model},
            "data": {"source": args.data, "eval_images": args.eval_images, "batch_size": 256},
            "paths": {"images_per_class": args.images_per_class, "top_k": args.top_k, "scope": args.scope,
                      "steps": 3 if args.quick else 20, "seed": seed},
            "importance": {"kind": kind, "calibration_images": args.calibration_images, "seed": seed,
                           "objective": args.objective},
            "prune": {"ratio": ratio, "compensate": comp, "scope": pscope, "mode": mode,
                      "budget_kind": args.budget_kind if pscope == "global" else None},
            "finetune": {"epochs": args.finetune_epochs, "train_images": args.finetune_images,
                         "batch_size": 128, "lr": 5e-4, "distill": {"alpha": 0.5, "temperature": 2.0}},
            "export": {"enabled": False}, "bench": {"enabled": False},
        })
        s = Pipeline(recipe, args.out, update=True, progress=False, log=lambda m: None).run()
        acc = s["accuracy"]
        imp = json.loads((Path(args.out) / "importance" / "stage.json").read_text())
        row = {**config,
               "objective": args.objective if CRITERIA[kind].uses_path_images or kind == "activation_taylor" else "",
               "top1": acc["pruned"]["top1"], "top5": acc["pruned"]["top5"],
               "finetuned_top1": acc["finetuned"]["top1"] if "finetuned" in acc else "",
               "dense_top1": acc["dense"]["top1"], "images": acc["pruned"]["images"],
               "macs_ratio": s["macs"]["pruned"] / s["macs"]["dense"],
               "path_seconds": s["paths"]["seconds"] if "paths" in s else "",
               "scoring_seconds": imp.get("scoring_seconds", ""),
               "widths": " ".join(map(str, s["ffn_widths"]["pruned"]))}
        rows.append(row)
        ft = f"  fine-tuned {row['finetuned_top1']:.4f}" if "finetuned" in acc else ""
        print(f"ratio {ratio:.2f}  {kind:20s} {pscope:7s} {mode:11s} compensate={comp:4s} seed {seed}  top1 {row['top1']:.4f}{ft} "
              f"(dense {row['dense_top1']:.4f})", flush=True)
        write_rows(Path(args.out), rows)  # after every row: an interrupted sweep keeps what it measured
    print(f"wrote {args.out}/sweep.csv and sweep.json")


def _key(row: dict) -> tuple:
    """What identifies a configuration, compared as text (rows read back from the CSV are text)."""
    return tuple(str(row.get(k, "")) for k in ("ratio", "kind", "compensate", "seed", "prune_scope", "mode",
                                                "budget_kind", "scope", "top_k"))


def write_rows(out: Path, rows: list[dict]) -> None:
    from prune.io import write_json

    write_csv(out / "sweep.csv", rows, list(rows[0]))
    write_json(out / "sweep.json", rows)


if __name__ == "__main__":
    main()
