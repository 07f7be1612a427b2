"""The export stage: ONNX files of the dense and the final model, each checked against PyTorch with onnxruntime,
and (`export.quantize`) their int8 versions, each judged by top-1 and agreement with its fp32 file on the
evaluation images (`prune/quantize.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import final_stage
from ..export import deploy_metadata, export_checked
from ..io import write_json
from ..quantize import int8_name, onnx_predictions, quantize_and_judge
from .context import RunContext

NAME = "export"
DISTRIBUTED = False


def inputs(ctx: RunContext) -> dict | None:
    r = ctx.r
    if not r.export.enabled:
        return None
    return {**ctx.eval_inputs(), "export": r.export.model_dump(), "reads": [final_stage(r)]}


def build(ctx: RunContext, out: Path) -> dict:
    e = ctx.r.export
    data_cfg, models = ctx.shipped_models()
    images = ctx.eval_images(data_cfg)
    metadata = deploy_metadata(data_cfg.as_dict(), ctx.class_names(), ctx.classes())
    info = {}
    for name, model in models.items():
        meta = export_checked(model.cpu(), images, out / f"{name}.onnx", opset=e.opset, atol=e.atol, metadata=metadata)
        meta["path"] = f"{name}.onnx"
        info[name] = meta
        ctx.log(f"[export] {name}.onnx: max |ORT - PyTorch| "
                f"{max(v['max_abs_diff'] for k, v in meta['parity'].items() if k.startswith('batch_')):.2e}")
    for name in list(models):
        if e.quantize:
            evals = ctx.loader(ctx.r.data.eval_split, data_cfg, ctx.r.data.eval_images, seed=0)
            batches = lambda: ((x.cpu().numpy(), y.cpu().numpy()) for x, y in ctx.batches(evals, "export"))  # noqa: E731
            reference = onnx_predictions(out / f"{name}.onnx", batches())  # fp32, once for every int8 version
        for mode in e.quantize:
            info[int8_name(name, mode)] = _int8(ctx, out, name, mode, data_cfg, batches, reference)
    write_json(out / "export.json", info)
    return info


def _int8(ctx: RunContext, out: Path, name: str, mode: str, data_cfg, batches, reference) -> dict:
    """Quantise `name.onnx`, then judge it against the fp32 file's predictions on the evaluation images."""
    r, e = ctx.r, ctx.r.export
    calibration = None
    if mode == "static":
        loader = ctx.loader(r.data.train_split, data_cfg, e.calibration_images, seed=r.importance.seed)
        calibration = lambda: (x.cpu().numpy() for x, _ in ctx.batches(loader, "calibration"))  # noqa: E731
    q, meta = quantize_and_judge(out / f"{name}.onnx", mode, calibration, batches, reference, e.max_int8_drop)
    meta["of"] = name
    j = meta["int8"]
    verdict = "" if j["within_threshold"] else (f"; loses more than {e.max_int8_drop * 100:.1f} points: "
                                                "not recommended for deployment")
    ctx.log(f"[export] {q.name}: top1 {j['top1']:.4f} (fp32 {j['fp32_top1']:.4f}), agreement {j['agreement']:.4f}{verdict}")
    return meta
