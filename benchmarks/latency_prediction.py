"""How well the latency table predicts a pruned model's latency, with and without its in-place calibration:
for each plan (the per-block widths in a run's `prune/prune.json`, or a `prune plan` file), the dense model is cut to those widths
(weights do not matter to the clock), exported, and timed alternately with the dense model on onnxruntime;
the table's prediction (calibrated, and with every kind's factor set to 1: the isolated steps of
RESULTS.md section 11) is set beside the measurement, as milliseconds and as speed-up.

    python benchmarks/latency_prediction.py --model ../shared/models/vit_tiny_cifar10 \\
        --plans RUN_A/prune/prune.json,RUN_B/prune/prune.json --csv benchmarks/results/latency_prediction.csv

Needs the machine to itself (it times things). A row is appended to the CSV after every plan.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from common import appending_csv

FIELDS = ["model", "plan", "macs_kept", "dense_ms", "pruned_ms", "speedup", "predicted_speedup",
          "isolated_speedup", "prediction_error", "isolated_error", "scale_heads", "scale_ffn", "table_seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the dense model (a model directory or timm name)")
    p.add_argument("--plans", required=True,
                   help="comma-separated RUN/prune/prune.json or RUN/plan.json files whose widths to time")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--csv", required=True)
    args = p.parse_args(argv)
    plans = [Path(x) for x in args.plans.split(",") if x]
    for f in plans:
        if not f.is_file():
            raise SystemExit(f"--plans: {f} is not a file; give the prune/prune.json of finished runs")

    from prune import latency as lat
    from prune.bench import measure_until_stable, ort_runner
    from prune.export import export_onnx
    from prune.models import load_model
    from prune.units import FFN, HEADS

    model, data_cfg, _ = load_model(args.model)
    model.eval()
    input_size = tuple(data_cfg.input_size)
    spec = lat.LatencySpec(threads=args.threads)
    table = lat.latency_table(model, spec, input_size)
    isolated = dataclasses.replace(table, scale={})
    with appending_csv(Path(args.csv), FIELDS) as append, tempfile.TemporaryDirectory(prefix="latency-prediction-") as tmp:
        x = torch.randn(1, *input_size)
        export_onnx(model, x, Path(tmp) / "dense.onnx")
        for i, plan in enumerate(plans):
            info = json.loads(plan.read_text())
            if "blocks" in info:  # a `prune plan` file (RUN/plan.json): per-block rows
                widths = {k: [b[k] for b in info["blocks"]] for k in (FFN.kind, HEADS.kind)}
                macs_kept = info["macs_planned"] / info["macs_dense"]
            else:  # a run's prune/prune.json
                widths = {k: u["widths"] for k, u in info["units"].items()}
                macs_kept = info["macs_pruned"] / info["macs_dense"]
            cut = copy.deepcopy(model)
            for unit in (FFN, HEADS):
                if unit.kind in widths:
                    unit.resize(cut, widths[unit.kind])
            export_onnx(cut.eval(), x, Path(tmp) / f"plan{i}.onnx")
            runners = {"dense": ort_runner(Path(tmp) / "dense.onnx", args.threads),
                       "pruned": ort_runner(Path(tmp) / f"plan{i}.onnx", args.threads)}
            res, _ = measure_until_stable(runners, input_size, (1,), warmup=5, repeats=args.repeats)
            dense, pruned = res["dense"]["1"]["median_ms"], res["pruned"]["1"]["median_ms"]
            pred, iso = table.predict(widths), isolated.predict(widths)
            row = {"model": Path(args.model).name, "plan": str(plan),
                   "macs_kept": round(macs_kept, 4), "dense_ms": round(dense, 4),
                   "pruned_ms": round(pruned, 4), "speedup": round(dense / pruned, 3),
                   "predicted_speedup": round(table.dense_ms / pred, 3),
                   "isolated_speedup": round(table.dense_ms / iso, 3),
                   # predicted ms anchored to the dense model measured beside it, against the measured ms
                   "prediction_error": round(dense * pred / table.dense_ms / pruned - 1, 4),
                   "isolated_error": round(dense * iso / table.dense_ms / pruned - 1, 4),
                   "scale_heads": round(table.scale.get(HEADS.kind, 1.0), 4),
                   "scale_ffn": round(table.scale.get(FFN.kind, 1.0), 4), "table_seconds": round(table.seconds, 1)}
            append(row)
            print(row, flush=True)


if __name__ == "__main__":
    main()
