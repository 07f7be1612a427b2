"""Latency budget against MACs budget on the shipped CIFAR recipe (one-shot, re-fit as the recipe ships):
top-1 and measured onnxruntime batch-1 latency of each pruned model, with the latency the table predicted,
and the table's build time:

    python benchmarks/latency_budget.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --latency-ratios 0.3,0.5 --macs-ratios 0.5,0.6 --eval-images 2000 \\
        --csv benchmarks/results/latency_budget_vit_tiny_cifar10.csv

Needs the machine to itself (it times things). One sweep run directory per budget (`--runs`/latency, `--runs`/macs: resumable, shared stages
built once); its targets' rows are appended to the CSV when the sweep ends.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from common import appending_csv
from prune.cli import main as prune
from prune.report import anchored_prediction


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--latency-ratios", default="0.3,0.5")
    p.add_argument("--macs-ratios", default="0.5,0.6")
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--csv", required=True)
    p.add_argument("--runs", default="runs/latency_budget")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="a recipe override for every run, e.g. --set finetune.epochs=1 (a recovery)")
    args = p.parse_args(argv)
    base = [f"model.name={args.model}", f"data.source={args.data}", "finetune.epochs=0", "bench.batch_sizes=[1]",
            f"bench.repeats={args.repeats}", "bench.pytorch=false", "bench.until_stable=true", *args.sets]
    base += [f"data.eval_images={args.eval_images}"] if args.eval_images else []
    path = Path(args.csv)
    fields = ["model", "budget", "target", "eval_images", "dense_top1", "pruned_top1", "final_top1", "macs_kept",
              "dense_ms", "pruned_ms", "speedup", "predicted_dense_ms", "predicted_pruned_ms", "prediction_error",
              "anchored_error", "noisy", "table_seconds", "run_seconds"]
    sweeps = [("latency", args.latency_ratios), ("macs", args.macs_ratios)]
    with appending_csv(path, fields) as append:
        for budget, targets in sweeps:
            if not targets:
                continue
            out = Path(args.runs) / budget  # one sweep per budget: shared stages once, a resumable directory
            start = time.perf_counter()
            argv = ["--recipe", "cifar10_vit_tiny_50pct.yaml", "--out", str(out), "--quiet", "--update",
                    *sum([["--set", s] for s in [*base, f"prune.{budget}_ratio=[{targets}]",
                                                   f"prune.{'macs' if budget == 'latency' else 'latency'}_ratio=null"]], [])]
            with contextlib.redirect_stdout(io.StringIO()):
                if prune(argv) != 0:
                    raise SystemExit(f"prune failed for the {budget} sweep {targets}")
            seconds = round(time.perf_counter() - start, 1)
            for label in json.loads((out / "summary.json").read_text())["targets"]:
                t = float(label.rsplit("-", 1)[1])
                one = out / "targets" / label  # a sweep of one target keeps its stages in `out` itself
                append(_row(args, budget, t, one, one if (one / "prune").is_dir() else out, seconds))


def _row(args, budget: str, t: float, target: Path, stages: Path, seconds: float) -> dict:
    """One target's figures from its directory in the sweep (its summary) and where its stages are."""
    s = json.loads((target / "summary.json").read_text())
    pr = json.loads((stages / "prune" / "prune.json").read_text())
    lat = s["latency"]["onnxruntime"]
    acc = s["accuracy"]
    lp = pr.get("latency_predicted")
    table = json.loads((stages / "prune" / "latency_table.json").read_text()) if lp else None
    row = {"model": Path(args.model).name, "budget": budget, "target": t,
           "eval_images": acc["dense"]["images"], "dense_top1": acc["dense"]["top1"],
           "pruned_top1": acc["pruned"]["top1"], "final_top1": list(acc.values())[-1]["top1"],
           "macs_kept": round(s["macs"]["pruned"] / s["macs"]["dense"], 4),
           "dense_ms": round(lat["dense"]["1"]["median_ms"], 4), "pruned_ms": round(lat["pruned"]["1"]["median_ms"], 4),
           "speedup": round(lat["dense"]["1"]["median_ms"] / lat["pruned"]["1"]["median_ms"], 3),
           "predicted_dense_ms": round(lp["dense_ms"], 4) if lp else None,
           "predicted_pruned_ms": round(lp["pruned_ms"], 4) if lp else None,
           "prediction_error": round(lp["pruned_ms"] / lat["pruned"]["1"]["median_ms"] - 1, 4) if lp else None,
           "anchored_error": round(anchored_prediction(lp, lat["dense"]["1"]["median_ms"])
                                   / lat["pruned"]["1"]["median_ms"] - 1, 4) if lp else None,
           "noisy": bool(s.get("bench", {}).get("noise", {}).get("onnxruntime", {}).get("noisy")),
           "table_seconds": round(table["seconds"], 1) if table else None,
           "run_seconds": seconds}
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
