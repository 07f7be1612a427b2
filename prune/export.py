"""ONNX export (dynamic batch axis) and its parity check against PyTorch with onnxruntime."""

from __future__ import annotations

import json

import contextlib
import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import PruneError

INLINE_LIMIT = 1 << 30  # weights stay inside the .onnx file below 1 GiB (protobuf's limit is 2 GiB)


class ParityError(PruneError):
    """The exported model disagrees with PyTorch beyond the tolerance."""


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path, opset: int = 18,
                metadata: dict[str, str] | None = None) -> dict:
    """Export with `torch.onnx.export` (the torch.export-based exporter) and a dynamic batch axis;
    `metadata` goes into the model's `metadata_props` (e.g. the original class ids of a specialised model)."""
    model = model.eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = size > INLINE_LIMIT
    # inline weights: write under a temp name and rename; external weights are referenced by file
    # name, so those are written in place (the stage directory itself is published atomically)
    target = path.with_name(f".{path.name}.tmp.onnx") if not external else path
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(target), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, external_data=external)
        if metadata:
            _add_metadata(target, metadata)
        if target != path:
            target.replace(path)
    finally:
        if target != path and target.exists():
            target.unlink()
    return {"path": str(path), "opset": opset, "weights_inline": not external, "bytes": path.stat().st_size}


def export_checked(model: torch.nn.Module, images: torch.Tensor, path: str | Path, *, opset: int = 18,
                   atol: float = 1e-4, metadata: dict[str, str] | None = None, batch_sizes=(1, 8)) -> dict:
    """Export `model` to `path` and check the file with onnxruntime against PyTorch on `images`
    (`check_parity`). Everything is written in a temporary directory beside `path` and moved into
    place only after the check passed (the weights file first, when weights are external)."""
    path = Path(path)
    tmpdir = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir(parents=True)
    try:
        meta = export_onnx(model, images[:1], tmpdir / path.name, opset=opset, metadata=metadata)
        meta["parity"] = check_parity(model, tmpdir / path.name, images, batch_sizes, atol)
        for f in sorted(tmpdir.iterdir(), key=lambda f: f.name == path.name):  # the .onnx last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    meta["path"] = str(path)
    return meta


def deploy_metadata(data_config: dict, class_names: list[str] | None = None,
                    classes: list[int] | None = None) -> dict[str, str]:
    """What a deployer needs beside the file, as ONNX `metadata_props` (JSON values): the input size and
    preprocessing (`prune.input_size`, `prune.mean`, `prune.std`, `prune.interpolation`, `prune.crop_pct`),
    the name of every output (`prune.class_names`) and, for a specialised model, the original class id of
    every output (`prune.classes`)."""
    meta = {f"prune.{k}": json.dumps(data_config[k]) for k in ("input_size", "mean", "std", "crop_pct")
            if k in data_config}
    if "interpolation" in data_config:
        meta["prune.interpolation"] = str(data_config["interpolation"])
    if class_names is not None:
        names = class_names if classes is None else [class_names[c] for c in classes]
        meta["prune.class_names"] = json.dumps(names)
    if classes is not None:
        meta["prune.classes"] = json.dumps(classes)
    return meta


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)  # external tensors keep their references
    for key, value in metadata.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime session (default: CUDA provider when present, else CPU); `threads` intra-op threads.
    The file passes `io.check_onnx` first (a model whose external data stays inside its folder)."""
    import onnxruntime as ort

    from .io import check_onnx

    check_onnx(path)
    opts = ort.SessionOptions()
    # no busy-waiting between runs: a spinning pool would steal the cores from the model measured next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                              if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def check_parity(model: torch.nn.Module, path: str | Path, images: torch.Tensor, batch_sizes=(1, 8),
                 atol: float = 1e-4) -> dict:
    """Max |ORT - PyTorch| of the logits on real images at each batch size; raises ParityError above `atol`
    (relative to the logits' scale when that exceeds 1)."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    out = {"atol": atol}
    for b in batch_sizes:
        x = images[:b]
        if len(x) < b:
            x = images.repeat(b // max(1, len(images)) + 1, 1, 1, 1)[:b]
        with torch.inference_mode():
            ref = model.eval()(x).float().cpu().numpy()
        got = sess.run(None, {name: x.cpu().numpy().astype(np.float32)})[0]
        diff = float(np.abs(got - ref).max())
        tol = atol * max(1.0, float(np.abs(ref).max()))
        out[f"batch_{b}"] = {"max_abs_diff": diff, "tolerance": tol}
        if not diff <= tol:
            raise ParityError(f"ONNX export {path} disagrees with PyTorch at batch {b}: max |diff| {diff:.3g} > {tol:.3g}")
    return out
