"""Scoring time of the default criterion (activation_taylor) before and after one-pass scoring, in one run.

Before: one gated forward/backward per block (`gates.attribution_rows`, what `prune.mode: oneshot`
ran until issue 16). After: one gated forward/backward per batch for every block and every unit
kind (`gates.first_order_tables`). Both score the same calibration images; the script checks the
tables agree and prints the time ratio. Run it with the machine to itself.

    python benchmarks/one_pass_scoring.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import split_images


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default=None, help="write the measurement here")
    args = ap.parse_args(argv)

    from prune.gates import attribution_rows, first_order_tables
    from prune.models import load_model
    from prune.units import FFN, HEADS

    model, data_cfg, _ = load_model(args.model)
    x, y = split_images(args.data, args.split, data_cfg, int(model.num_classes), args.images, seed=0)
    batches = lambda: [(x[s:s + args.batch_size], y[s:s + args.batch_size]) for s in range(0, len(y), args.batch_size)]  # noqa: E731
    n_cls, L = int(model.num_classes), len(model.blocks)

    out = {"model": args.model, "images": len(y), "blocks": L, "threads": torch.get_num_threads()}
    t = time.perf_counter()
    per_block = torch.stack([attribution_rows(model, FFN, batches, n_cls, steps=None, objective="logprob")(l)
                             for l in range(L)])
    out["per_block_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    one = first_order_tables(model, [FFN], batches, n_cls, objective="logprob")["ffn"]
    out["one_pass_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    both = first_order_tables(model, [FFN, HEADS], batches, n_cls, objective="logprob")
    out["one_pass_ffn_and_heads_seconds"] = time.perf_counter() - t
    out["max_rel_diff"] = float(((one - per_block).abs().max() / per_block.abs().max()).item())
    out["heads_table_equal"] = bool(torch.allclose(both["ffn"], one, rtol=1e-6, atol=0))
    out["speedup"] = out["per_block_seconds"] / out["one_pass_seconds"]
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
