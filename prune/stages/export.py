"""The export stage: ONNX files of the dense and the final model, each checked against PyTorch with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import final_stage
from ..export import export_checked
from ..io import write_json

NAME = "export"
DISTRIBUTED = False


def inputs(ctx) -> dict | None:
    r = ctx.r
    if not r.export.enabled:
        return None
    return {**ctx.eval_inputs(), "export": r.export.model_dump(), "reads": [final_stage(r.finetune.epochs)]}


def build(ctx, out: Path) -> dict:
    e = ctx.r.export
    data_cfg, models = ctx.shipped_models()
    images = ctx.eval_images(data_cfg)
    classes = ctx.classes()
    metadata = None if classes is None else {"prune.classes": json.dumps(classes)}
    info = {}
    for name, model in models.items():
        meta = export_checked(model.cpu(), images, out / f"{name}.onnx", opset=e.opset, atol=e.atol, metadata=metadata)
        meta["path"] = f"{name}.onnx"
        info[name] = meta
        ctx.log(f"[export] {name}.onnx: max |ORT - PyTorch| "
                f"{max(v['max_abs_diff'] for k, v in meta['parity'].items() if k.startswith('batch_')):.2e}")
    write_json(out / "export.json", info)
    return info
