"""How much each token's error should count in the least-squares re-fit: one cut model (a run's `prune/`
directory, before any re-fit) re-fitted to its dense model with the prefix (CLS) token weighted 1, 8, 64,
... times a patch token, and optionally with only the CLS token fitted in the last block (the only token
a `global_pool="token"` classifier reads there); top-1 on the first test images after each:

    python benchmarks/refit_token_weights.py --model ../shared/models/vit_tiny_cifar10 --cut RUN/prune \\
        --data ../shared/data/cifar10 --eval-images 2000 --settings 1:0,64:0,256:0 --csv results/refit_token_weights.csv

Calibration: `--images` training images drawn with a fixed seed (the same for every setting). A row is
appended to the CSV after every setting.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import appending_csv, top1

FIELDS = ["model", "cut", "calibration_images", "eval_images", "prefix_weight", "last_prefix_only", "dense_top1",
          "cut_top1", "refitted_top1", "seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the dense model directory")
    p.add_argument("--cut", required=True, help="a pruned-model directory (a run's prune/), not yet re-fitted")
    p.add_argument("--data", required=True)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--images", type=int, default=256, help="calibration images")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--settings", default="1:0,64:0,256:0",
                   help="prefix_weight:last_prefix_only pairs, e.g. 64:0 (CLS x64) or 64:1 (and only CLS in the last block)")
    p.add_argument("--csv", required=True)
    args = p.parse_args(argv)
    settings = [(float(w), bool(int(last))) for w, last in (s.split(":") for s in args.settings.split(","))]

    from prune.checkpoint import load_pruned
    from prune.data import open_split, stack_rows
    from prune.models import load_model
    from prune.reconstruct import refit

    torch.manual_seed(0)
    dense, data_cfg, _ = load_model(args.model)
    cut, _ = load_pruned(args.cut)
    dense.eval()
    cut.eval()
    train, test = open_split(args.data, "train"), open_split(args.data, "test")
    rows = torch.randperm(len(train.ds), generator=torch.Generator().manual_seed(1))[:args.images].tolist()
    x, y = stack_rows(train, data_cfg, rows)
    cal_batches = [(x[j:j + 64], y[j:j + 64]) for j in range(0, len(x), 64)]
    ex, ey = stack_rows(test, data_cfg, list(range(args.eval_images)))
    dense_top1, cut_top1 = top1(dense, ex, ey), top1(cut, ex, ey)
    with appending_csv(Path(args.csv), FIELDS) as append:
        for weight, last in settings:
            m = copy.deepcopy(cut)
            start = time.perf_counter()
            refit(m, dense, cal_batches, ridge=args.ridge, prefix_weight=weight, last_prefix_only=last)
            row = {"model": Path(args.model).name, "cut": args.cut, "calibration_images": args.images,
                   "eval_images": args.eval_images, "prefix_weight": weight, "last_prefix_only": last,
                   "dense_top1": dense_top1, "cut_top1": cut_top1, "refitted_top1": top1(m, ex, ey),
                   "seconds": round(time.perf_counter() - start, 1)}
            append(row)
            print(row, flush=True)


if __name__ == "__main__":
    main()
