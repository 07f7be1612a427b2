"""One-shot top-1 with and without the re-fit (`prune.reconstruct: lstsq` or `blockwise`), over MACs
targets, calibration sizes and ridge terms (and, for blockwise, its start, steps and learning rates), on
the shipped CIFAR recipe (no fine-tune, no export):

    python benchmarks/reconstruct_sweep.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --targets 0.5,0.6 --images 256,1024 --ridges 1e-4,1e-3,1e-2 --eval-images 2000 \\
        --csv benchmarks/results/reconstruct_vit_tiny_cifar10.csv
    python benchmarks/reconstruct_sweep.py ... --methods blockwise --images 256 --ridges 1e-3 \\
        --starts lstsq,pruned --steps 200 --lrs 1e-4,3e-4 --csv benchmarks/results/reconstruct_blockwise_vit_tiny_cifar10.csv

One run directory per target (stages that do not change are reused across configurations); a row is
appended to the CSV after every configuration, so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
from pathlib import Path

from common import appending_csv
from prune.cli import main as prune


def run(out: Path, sets: list[str]) -> dict:
    argv = ["--recipe", "cifar10_vit_tiny_50pct.yaml", "--out", str(out), "--quiet", "--update",
            *sum([["--set", s] for s in sets], [])]
    with contextlib.redirect_stdout(io.StringIO()):
        code = prune(argv)
    if code != 0:
        raise SystemExit(f"prune exited {code} for {sets}")
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--targets", default="0.5,0.6", help="prune.macs_ratio values")
    p.add_argument("--images", default="256,1024", help="prune.reconstruct_images values")
    p.add_argument("--ridges", default="1e-4,1e-3,1e-2", help="prune.reconstruct_ridge values")
    p.add_argument("--methods", default="lstsq", help="prune.reconstruct values: lstsq, blockwise")
    p.add_argument("--starts", default="lstsq", help="blockwise: prune.reconstruct_start values")
    p.add_argument("--steps", default="200", help="blockwise: prune.reconstruct_steps values")
    p.add_argument("--lrs", default="1e-4", help="blockwise: prune.reconstruct_lr values")
    p.add_argument("--eval-images", type=int, default=None, help="test images (default: all)")
    p.add_argument("--csv", required=True)
    p.add_argument("--runs", default="runs/reconstruct_sweep")
    args = p.parse_args(argv)
    base = [f"model.name={args.model}", f"data.source={args.data}", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false"] + ([f"data.eval_images={args.eval_images}"] if args.eval_images else [])
    path = Path(args.csv)
    fields = ["model", "macs_ratio", "reconstruct", "images", "ridge", "eval_images", "dense_top1", "oneshot_top1",
              "refitted_top1", "reconstruct_seconds"]
    blockwise = [dict(zip(("start", "steps", "lr"), c)) for c in itertools.product(
        args.starts.split(","), [int(x) for x in args.steps.split(",")], [float(x) for x in args.lrs.split(",")])]
    methods = [(m, c) for m in args.methods.split(",") for c in (blockwise if m == "blockwise" else [{}])]
    if "blockwise" in args.methods.split(","):
        fields += ["start", "steps", "lr"]
    with appending_csv(path, fields) as append:
        for t in [float(x) for x in args.targets.split(",")]:
            out = Path(args.runs) / f"macs{t}"
            for n in [int(x) for x in args.images.split(",")]:
                for ridge, (method, c) in itertools.product([float(x) for x in args.ridges.split(",")], methods):
                    s = run(out, [*base, f"prune.macs_ratio={t}", f"prune.reconstruct={method}",
                                  f"prune.reconstruct_images={n}", f"prune.reconstruct_ridge={ridge}",
                                  *[f"prune.reconstruct_{k}={v}" for k, v in c.items()]])
                    acc = s["accuracy"]
                    row = {"model": Path(args.model).name, "macs_ratio": t, "reconstruct": method, "images": n,
                           "ridge": ridge, "eval_images": acc["dense"]["images"], "dense_top1": acc["dense"]["top1"],
                           "oneshot_top1": acc["pruned"]["top1"], "refitted_top1": acc["refitted"]["top1"],
                           "reconstruct_seconds": round(s["reconstruct"]["seconds"], 1), **c}
                    append(row)
                    print(row, flush=True)


if __name__ == "__main__":
    main()
