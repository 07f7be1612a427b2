"""The report stage: the run's metrics collected from every stage's files (`summary.json`), then
`report/metrics.json`, `report.md` and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import artifacts, cut_stage, final_stage, shipped
from ..checkpoint import STRUCTURE_FILE, WEIGHTS_FILE
from ..report import write_report
from ..run import stage_key
from . import baseline, bench, evaluate, export, finetune, importance, paths, prune, reconstruct
from .context import RunContext

NAME = "report"
DISTRIBUTED = False


def inputs(ctx: RunContext) -> dict:
    r = ctx.r
    ctx.summary = collect(ctx)
    after = [final_stage(r)] + [s.NAME for s, on in ((export, r.export.enabled), (bench, r.bench.enabled)) if on]
    return {"report": r.report.model_dump(), "reads": [evaluate.NAME, baseline.NAME, *after],
            "metrics": stage_key(ctx.summary)}


def build(ctx: RunContext, out: Path) -> dict:
    stats = ctx.run_dir.path(paths.NAME) / "stats.safetensors" if ctx.needs_paths else None
    m = write_report(ctx.summary, out, stats, ctx.r.report.heatmap_classes)
    ctx.log(f"[report] {len(m['plots'])} plots and report.md written")
    return {"plots": m["plots"]}


def collect(ctx: RunContext) -> dict:
    """Everything the run measured, from the stage files."""
    rd, r = ctx.run_dir, ctx.r
    read = lambda stage, f: json.loads((rd.path(stage) / f).read_text())  # noqa: E731
    pr = read(prune.NAME, "prune.json")
    metrics = {**read(baseline.NAME, "metrics.json"), **read(evaluate.NAME, "metrics.json")}
    summary = {
        "recipe": r.name, "model": r.model.name, "data": r.data.source,
        "importance": r.importance.kind, "prune": r.prune.model_dump(),
        "classes": read(cut_stage(r), STRUCTURE_FILE).get("classes"),
        "params": {"dense": pr["params_dense"], "pruned": pr["params_pruned"]},
        "macs": {"dense": pr["macs_dense"], "pruned": pr["macs_pruned"]},
        "ffn_widths": {"dense": pr["dense_widths"], "pruned": pr["widths"]},
        "widths": {k: {"dense": u["dense_widths"], "pruned": u["widths"]} for k, u in pr["units"].items()},
        "emptied_blocks": pr["emptied_blocks"],
        **({"latency_predicted": pr["latency_predicted"]} if "latency_predicted" in pr else {}),
        "accuracy": {"dense": metrics["dense"], "pruned": metrics["pruned"]},
        "skipped_rows": {"eval": sorted(set(metrics["dense"].pop("skipped_rows", [])
                                            + metrics["pruned"].pop("skipped_rows", []))),
                         "calibration": read(importance.NAME, "importance.json").get("skipped_rows", [])},
    }
    if ctx.needs_paths:
        summary["paths"] = read(paths.NAME, "summary.json")
        summary["skipped_rows"]["paths"] = summary["paths"].get("skipped_rows", [])
    if r.prune.reconstruct != "none":
        rc = read(reconstruct.NAME, "metrics.json")
        rc["refitted"].pop("skipped_rows", None)
        summary["accuracy"]["refitted"] = rc.pop("refitted")
        summary["reconstruct"] = {k: v for k, v in rc.items() if k != "branches"}
    if r.finetune.epochs > 0:
        ft = read(finetune.NAME, "metrics.json")
        ft["finetuned"].pop("skipped_rows", None)
        summary["accuracy"]["finetuned"] = ft.pop("finetuned")
        summary["finetune"] = ft
    if r.export.enabled:
        summary["onnx"] = read(export.NAME, "export.json")
    if r.bench.enabled:
        b = read(bench.NAME, "bench.json")
        summary["latency"] = b.pop("latency")
        summary["bench"] = b
    summary["measured_on"] = measured_on(ctx, summary)
    return summary


def measured_on(ctx: RunContext, summary: dict) -> dict:
    """The file (path in the run directory and its SHA-256 from the stage's record) behind every figure."""
    rd, r = ctx.run_dir, ctx.r

    def ref(stage: str | None, name: str):
        if stage is None:
            return r.model.name  # the recipe's own model (a timm name or a model directory)
        files = json.loads((rd.path(stage) / "stage.json").read_text()).get("files", {})
        return {"path": f"{rd.place(stage)}/{name}", "sha256": files.get(name, {}).get("sha256")}

    out = {"accuracy": {a.name: ref(a.stage, WEIGHTS_FILE) for a in artifacts(r)}}
    models = {name: ref(a.stage, WEIGHTS_FILE) for name, a in shipped(r)}
    if "onnx" in summary:
        out["onnx"] = {name: ref(export.NAME, f"{name}.onnx") for name in summary["onnx"]}
    if "latency" in summary:
        out["latency"] = {engine: (models if engine == "pytorch" else out.get("onnx", {}))
                          for engine in summary["latency"]}
    return out
