"""Scoring time of every pruning configuration against one plain path discovery over the same images.

Run on a quiet machine (nothing else running): every timing here is wall time on the same images,
in one process, with the same number of threads.

    python benchmarks/scoring_cost.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \
        --json benchmarks/results/scoring_cost_vit_tiny_cifar10.json
    python benchmarks/scoring_cost.py --quick      # embedded digits model (the CI smoke test)

Images: `--images-per-class` of every class of the train split (seed 0), the path images of the
sweeps; calibration images (Taylor, activation_taylor): `--calibration-images` random train images.
Discovery is `locate_paths` (Algorithm 1, top-20) at scope "tokens" (what path_frequency uses for
pruning) and "cls" (the paper's), without the remove/enhance check. Progressive scoring is timed at
50% uniform (the widths do not change its cost, only which neurons are masked).
"""

from __future__ import annotations

import argparse
import random
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None, help="rows (images x steps) per chunk, as paths.batch_size")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.images_per_class, args.calibration_images, args.steps, args.top_k = 1, 32, 2, 5

    import torch

    from prune.data import open_split, sample_per_class, stack_rows
    from prune.criteria import ImportanceContext, get_criterion
    from prune.io import write_json
    from prune.models import load_model
    from prune.paths import locate_paths
    from prune.schedule import progressive_table
    from prune.units import FFN

    model, data_cfg, _ = load_model(args.model)
    train = open_split(args.data, "train")
    C = model.num_classes

    def tensors(rows):
        return stack_rows(train, data_cfg, rows, C)

    px, py = tensors(sample_per_class(train.labels(), args.images_per_class, C, 0))
    cx, cy = tensors(sorted(random.Random(0).sample(range(len(train.ds)), args.calibration_images)))
    chunk = lambda x, y, n: [(x[s:s + n], y[s:s + n]) for s in range(0, len(y), n)]  # noqa: E731
    ctx = ImportanceContext(model, calibration=lambda: chunk(cx, cy, 256), example_inputs=cx[:1],
                            path_images=lambda: chunk(px, py, 256), steps=args.steps, rows=args.batch_size)
    widths = FFN.widths(model)
    half = [w // 2 for w in widths]

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    res = {"model": args.model, "path_images": len(py), "calibration_images": len(cy), "steps": args.steps,
           "top_k": args.top_k, "threads": torch.get_num_threads(), "seconds": {}}
    sec = res["seconds"]
    for scope in ("tokens", "cls"):
        sec[f"discovery_{scope}"] = timed(lambda: locate_paths(
            model, px, py, steps=args.steps, top_k=args.top_k, scope=scope, batch_size=args.batch_size, progress=False))
        print(f"discovery ({scope}): {sec[f'discovery_{scope}']:.1f} s", flush=True)
    for kind in ("path_attribution", "activation_taylor", "taylor"):
        crit = get_criterion(kind)
        sec[f"{kind}_oneshot"] = timed(lambda: crit.scores(ctx, FFN))
        sec[f"{kind}_progressive"] = timed(lambda: progressive_table(
            model, FFN, lambda t: crit.score_block(ctx, FFN, t), half, progress=False))
        print(f"{kind}: one-shot {sec[f'{kind}_oneshot']:.1f} s, progressive {sec[f'{kind}_progressive']:.1f} s",
              flush=True)
    base = sec["discovery_tokens"]
    res["ratio_to_discovery_tokens"] = {k: v / base for k, v in sec.items()}
    for k, v in res["ratio_to_discovery_tokens"].items():
        print(f"  {k:32s} {sec[k]:8.1f} s  {v:6.2f}x discovery (tokens)")
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
