"""Variants of the attribution criterion, tried and kept or dropped: how per-image scores are aggregated,
what they explain, Torch-Pruning's per-block normalisation, and a second prune-and-rescore round.

Every variant prunes the same dense model by masking (a removed neuron is a zero activation, as
structural removal makes it) and is evaluated on the whole test split:

    python benchmarks/attribution_variants.py --model ../shared/models/vit_tiny_cifar10 \
        --data ../shared/data/cifar10 --json benchmarks/results/attribution_variants_vit_tiny_cifar10.json
    python benchmarks/attribution_variants.py --quick     # embedded digits model (the CI smoke test)

- aggregation of the per-image block IG over images (classes weighted equally): mean |IG| (the
  criterion), mean IG^2, and the signed mean (an unbiased estimate of the objective's change);
- objective: log p(label) (the criterion) or p(label) (the paper's);
- Torch-Pruning's Taylor with and without its per-block mean normalisation, ranked globally;
- two rounds: prune half the target globally, rescore every block on that model, prune to the target.
"""

from __future__ import annotations

import argparse
import random

from common import top1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--ratios", default="0.5,0.7")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.images_per_class, args.calibration_images, args.steps, args.ratios = 2, 32, 2, "0.5"

    import torch
    import torch_pruning as tp

    from prune.data import open_split, sample_per_class, stack_rows
    from prune.budget import keep_mask, kept_counts
    from prune.criteria import ImportanceContext, Taylor, tp_table
    from prune.gates import ClassBalancedMean, block_attribution, unit_masks
    from prune.io import write_json
    from prune.models import load_model
    from prune.recipe import PruneCfg
    from prune.units import FFN

    model, data_cfg, _ = load_model(args.model)
    C, L = model.num_classes, len(model.blocks)
    widths = FFN.widths(model)

    def tensors(split, rows):
        data = open_split(args.data, split)
        rows = list(range(len(data.ds))) if rows is None else rows(data.labels(), len(data.ds))
        return stack_rows(data, data_cfg, rows, C)

    px, py = tensors("train", lambda labels, n: sample_per_class(labels, args.images_per_class, C, args.seed))
    cx, cy = tensors("train", lambda labels, n: sorted(random.Random(args.seed).sample(range(n), args.calibration_images)))
    tx, ty = tensors("test", None)

    def masked_top1(masks) -> float:
        with unit_masks(model, FFN, masks):
            return top1(model, tx, ty)

    def per_image(objective, masks=None):
        """Per-image block IG `[n, L, D]`, every block scored with `masks` active (default: dense)."""
        with unit_masks(model, FFN, masks or [None] * L):
            return torch.stack([block_attribution(model, FFN, l, px, py, steps=args.steps, objective=objective)
                                for l in range(L)], 1)

    def aggregate(ig, how):
        out = []
        for l in range(L):
            agg = ClassBalancedMean(C, widths[l])
            s = {"abs": ig[:, l], "square": ig[:, l] ** 2, "signed": ig[:, l]}[how]
            if how == "signed":  # ClassBalancedMean takes |.|; the signed mean needs its own sums
                seen = [c for c in range(C) if (py == c).any()]
                out.append(torch.stack([s[py == c].mean(0) for c in seen]).sum(0))
                continue
            agg.add(s, py)
            out.append(agg.value())
        return torch.stack(out)

    def masks_for(table, ratio, scope):
        keep = kept_counts(table, widths, PruneCfg(ratio=ratio, scope=scope, max_layer_ratio=0.9))
        return [keep_mask(table[l], keep[l]) for l in range(L)]

    rows = []

    def record(name, scope, ratio, table):
        acc = masked_top1(masks_for(table, ratio, scope))
        rows.append({"variant": name, "scope": scope, "ratio": ratio, "top1": acc})
        print(f"{name:40s} {scope:8s} {ratio:.0%}  top1 {acc:.4f}", flush=True)

    ratios = [float(r) for r in args.ratios.split(",")]
    dense_acc = masked_top1([None] * L)
    print(f"dense top1 {dense_acc:.4f}")
    ig = {obj: per_image(obj) for obj in ("logprob", "prob")}
    for ratio in ratios:
        for how in ("abs", "square", "signed"):
            for scope in ("uniform", "global"):
                record(f"IG log p, {how}", scope, ratio, aggregate(ig["logprob"], how))
        record("IG p (the paper's objective), abs", "global", ratio, aggregate(ig["prob"], "abs"))
    batches = lambda: [(cx[s:s + 256], cy[s:s + 256]) for s in range(0, len(cy), 256)]  # noqa: E731
    ctx = ImportanceContext(model, calibration=batches, example_inputs=cx[:1])
    normalised = Taylor(normalizer="mean").scores(ctx, FFN)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches():
            torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    raw = tp_table(ctx, FFN, tp.importance.GroupTaylorImportance(normalizer=None))
    model.zero_grad(set_to_none=True)
    for ratio in ratios:
        record("Torch-Pruning Taylor (mean-normalised per block)", "global", ratio, normalised)
        record("Torch-Pruning Taylor, no normalisation", "global", ratio, raw)
        first = aggregate(ig["logprob"], "abs")
        half = masks_for(first, ratio / 2, "global")
        record("IG log p, abs, two rounds", "global", ratio, aggregate(per_image("logprob", half), "abs"))
    if args.json:
        write_json(args.json, {"model": args.model, "dense_top1": dense_acc, "seed": args.seed,
                               "path_images": len(py), "calibration_images": len(cy), "steps": args.steps,
                               "rows": rows})


if __name__ == "__main__":
    main()
