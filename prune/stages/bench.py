"""The bench stage: latency of every artifact in one run: the dense and the final model in PyTorch, and every
ONNX file the export stage wrote (fp32 and int8) in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..artifacts import final_stage
from ..bench import cuda_provider_available, measure_until_stable, ort_runner, threads_info, torch_runner
from ..io import write_json
from . import export
from .context import RunContext

NAME = "bench"
DISTRIBUTED = False


def inputs(ctx: RunContext) -> dict | None:
    r = ctx.r
    if not r.bench.enabled:
        return None
    reads = [final_stage(r)] + ([export.NAME] if r.export.enabled else [])
    return {"bench": r.bench.model_dump(), "reads": reads}


def build(ctx: RunContext, out: Path) -> dict:
    b = ctx.r.bench
    if b.threads:
        torch.set_num_threads(b.threads)
    data_cfg, models = ctx.shipped_models()
    latency, noise = {}, {}
    rounds = 5 if b.until_stable else 1
    if b.pytorch:
        latency["pytorch"], noise["pytorch"] = measure_until_stable(
            {name: torch_runner(m) for name, m in models.items()}, data_cfg.input_size, b.batch_sizes, b.warmup,
            b.repeats, max_rounds=rounds)
    if b.onnxruntime:
        exp = ctx.run_dir.path(export.NAME)
        files = list(json.loads((exp / "export.json").read_text()))  # fp32 and int8 artifacts
        engines = [("onnxruntime", "CPUExecutionProvider")]
        if cuda_provider_available():
            engines.append(("onnxruntime_cuda", "CUDAExecutionProvider"))
        for engine, provider in engines:
            names = files if provider == "CPUExecutionProvider" else list(models)  # int8 kernels are CPU ones
            latency[engine], noise[engine] = measure_until_stable(
                {name: ort_runner(exp / f"{name}.onnx", b.threads, provider) for name in names},
                data_cfg.input_size, b.batch_sizes, b.warmup, b.repeats, max_rounds=rounds)
    for engine, n in noise.items():
        if n["noisy"]:
            ctx.log(f"[bench] warning: {engine} latency is noisy: {'; '.join(n['reasons'])}")
    info = {"latency": latency, "noise": noise, "warmup": b.warmup, "repeats": b.repeats,
            "threads": b.threads or torch.get_num_threads(), **threads_info()}
    write_json(out / "bench.json", info)
    return {"threads": info["threads"]}
