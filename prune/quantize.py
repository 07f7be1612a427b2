"""int8 ONNX beside fp32: onnxruntime's dynamic and static (QDQ) quantisation, judged by accuracy.

`quantize_onnx` runs `quant_pre_process` (shape inference and graph optimisation), then
- `dynamic`: `quantize_dynamic` (int8 weights, activations quantised at run time per tensor),
  onnxruntime's recommendation for transformers;
- `static`: `quantize_static` in QDQ format, int8 weights (per channel) and int8 activations (S8S8,
  onnxruntime's first choice for QDQ on CPU) with ranges calibrated on real images
  (`CalibrationDataReader` over the recipe's training split).
Only the matrix products are quantised (MatMul, Gemm, Conv: nearly all of a ViT's MACs); LayerNorm,
GELU and Softmax stay in float. An int8 model cannot be judged by a max-abs tolerance, so
`judge` measures its top-1 and its top-1 agreement with the fp32 file on evaluation images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

MODES = ("dynamic", "static")
OPS = ["MatMul", "Gemm", "Conv"]  # the matrix products; norms, GELU and softmax stay float


def int8_name(name: str, mode: str) -> str:
    """`pruned` -> `pruned.int8-static`: the artifact (and file stem) of a quantised model."""
    return f"{name}.int8-{mode}"


class _Reader:
    """onnxruntime's `CalibrationDataReader` protocol over batches of images (numpy float32 `[B, C, H, W]`)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.name, self.it = input_name, iter(batches)

    def get_next(self):
        batch = next(self.it, None)
        return None if batch is None else {self.name: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_onnx(fp32: str | Path, out: str | Path, mode: str,
                  calibration: Callable[[], Iterable[np.ndarray]] | None = None, per_channel: bool = True) -> dict:
    """Write the `mode` int8 version of the ONNX file `fp32` to `out` (through a temporary directory,
    renamed when complete). `calibration` (static only) returns batches of prepared images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .errors import ConfigError
    from .export import ort_session

    if mode not in MODES:
        raise ConfigError(f"unknown quantisation {mode!r}; choose from {', '.join(MODES)}")
    if mode == "static" and calibration is None:
        raise ConfigError("static quantisation needs calibration images (a dataset); use --quantize dynamic, "
                          "or give the data")
    fp32, out = Path(fp32), Path(out)
    from .io import check_onnx

    check_onnx(fp32)  # before quant_pre_process loads it with its external data
    tmpdir = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir(parents=True)
    try:
        pre = tmpdir / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        target = tmpdir / out.name
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=OPS)
        else:
            name = ort_session(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
            quantize_static(str(pre), str(target), _Reader(name, calibration()), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=OPS, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True})
        _copy_metadata(fp32, target)
        os.replace(target, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return {"mode": mode, "path": out.name, "bytes": out.stat().st_size, "ops": OPS, "per_channel": per_channel,
            "format": "QOperator (dynamic)" if mode == "dynamic" else "QDQ S8S8"}


def _copy_metadata(src: Path, dst: Path) -> None:
    """The fp32 file's `metadata_props` (preprocessing, class names) onto the int8 file."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    if meta:
        from .export import _add_metadata

        _add_metadata(dst, meta)


def onnx_predictions(path: str | Path, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 predictions, labels) of an ONNX file on `(images, labels)` batches, on the CPU provider."""
    from .export import ort_session

    sess = ort_session(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds, labels = [], []
    for x, y in batches:
        preds.append(sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0].argmax(-1))
        labels.append(np.asarray(y))
    return np.concatenate(preds), np.concatenate(labels)


def judge(int8: str | Path, reference: tuple[np.ndarray, np.ndarray], batches: Iterable, max_drop: float) -> dict:
    """Top-1 of the int8 file and of its fp32 file on the same images, their top-1 agreement, and whether
    the int8 model loses more than `max_drop` (a fraction: 0.01 = one point) against fp32. `reference` is
    `onnx_predictions` of the fp32 file on `batches` (computed once for all of its int8 versions)."""
    p8, y = onnx_predictions(int8, batches)
    p32, y32 = reference
    assert np.array_equal(y, y32), "the int8 and fp32 files must be judged on the same images"
    top1, fp32_top1 = float((p8 == y).mean()), float((p32 == y).mean())
    drop = fp32_top1 - top1
    return {"top1": top1, "fp32_top1": fp32_top1, "agreement": float((p8 == p32).mean()), "images": int(len(y)),
            "drop": drop, "max_drop": max_drop, "within_threshold": bool(drop <= max_drop + 1e-12)}


def quantize_and_judge(fp32: str | Path, mode: str, calibration, batches, reference, max_drop: float) -> tuple[Path, dict]:
    """Quantise the ONNX file `fp32` with `mode` into the file beside it (`int8_name`), then judge the int8 file
    against the fp32 predictions `reference` (`onnx_predictions`) on `batches()` (`judge`; its verdict is the
    metadata's `int8`). `reference` None: not judged (no evaluation images). The export stage and
    `prune export --quantize` both call this. Returns the int8 file and its metadata."""
    fp32 = Path(fp32)
    q = fp32.with_name(f"{int8_name(fp32.stem, mode)}.onnx")
    meta = quantize_onnx(fp32, q, mode, calibration)
    if reference is not None:
        meta["int8"] = judge(q, reference, batches(), max_drop)
    return q, meta
