"""fp32 vs dynamic and static int8 ONNX of a dense and a pruned model: top-1, agreement, latency (issue 19).

Variants (all after onnxruntime's `quant_pre_process`):
  fp32            the exported file
  dynamic         prune's `dynamic` (quantize_dynamic, int8 weights per channel, MatMul/Gemm/Conv)
  static          prune's `static` (QDQ S8S8, per channel, MatMul/Gemm/Conv; norms, GELU, softmax float)
  static_u8s8     QDQ with uint8 activations (onnxruntime's docstring advice for x86 with VNNI)
  static_allops   QDQ S8S8 on every operator onnxruntime can quantise (norms, GELU, softmax too)
  opt_dynamic     onnxruntime's transformer optimizer (model_type='vit') first, then dynamic
Phases: `accuracy` (top-1 on the evaluation split and agreement with fp32 for every file; rows appended
as they come) and `latency` (every file at batch 1 and 32 in one alternating run: give it the machine).

    python benchmarks/int8_export.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --pruned runs/cifar/prune --out benchmarks/results/int8_vit_tiny_cifar10
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from common import split_images, write_csv

VARIANTS = ("fp32", "dynamic", "static", "static_u8s8", "static_allops", "opt_dynamic")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--pruned", default=None, help="a pruned-model directory (structure.json) to compare too")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--phases", default="accuracy,latency")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)

    from prune.export import export_onnx
    from prune.models import load_model
    from prune.checkpoint import load_pruned

    dense, data_cfg, _ = load_model(args.model)
    models = {"dense": dense}
    if args.pruned:
        models["pruned"] = load_pruned(args.pruned)[0]
    x_eval, y_eval = split(args.data, "test", data_cfg, args.eval_images, dense)
    x_cal, _ = split(args.data, "train", data_cfg, args.calibration_images, dense)
    variants = args.variants.split(",")
    files = {}
    for name, model in models.items():
        fp32 = out / "onnx" / f"{name}.fp32.onnx"
        if not fp32.is_file():
            export_onnx(model, x_eval[:1], fp32)
        for v in variants:
            path = out / "onnx" / f"{name}.{v}.onnx"
            if not path.is_file():
                make(v, fp32, path, x_cal)
            files[f"{name}.{v}"] = path
    if "accuracy" in args.phases:
        rows = []
        for name in models:
            ref = predictions(files[f"{name}.fp32"], x_eval)
            for v in variants:
                p = predictions(files[f"{name}.{v}"], x_eval)
                rows.append({"model": Path(args.model).name, "artifact": name, "variant": v,
                             "top1": float((p == y_eval).mean()), "agreement_with_fp32": float((p == ref).mean()),
                             "images": len(y_eval), "bytes": files[f"{name}.{v}"].stat().st_size})
                write_csv(out / "accuracy.csv", rows)
                print(f"{name:7s} {v:14s} top1 {rows[-1]['top1']:.4f} agreement {rows[-1]['agreement_with_fp32']:.4f}",
                      flush=True)
    if "latency" in args.phases:
        from prune.bench import measure, ort_runner

        res = measure({k: ort_runner(f) for k, f in files.items()}, tuple(data_cfg.input_size), (1, 32), 3, args.repeats)
        base = res["dense.fp32"]
        rows = [{"artifact": k, "batch": b, **r, "speedup_vs_dense_fp32": base[b]["median_ms"] / r["median_ms"]}
                for k, per in res.items() for b, r in per.items()]
        write_csv(out / "latency.csv", rows)
        flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
        (out / "machine.json").write_text(json.dumps({
            "cpu": next((l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("model name")), platform.processor()),
            "avx512_vnni": " avx512_vnni" in flags, "avx_vnni": " avx_vnni" in flags, "avx512f": " avx512f" in flags,
            "amx_int8": " amx_int8" in flags, "threads": torch.get_num_threads()}, indent=1))
        for r in rows:
            print(f"{r['artifact']:22s} b{r['batch']:>2s} {r['median_ms']:8.2f} ms  x{r['speedup_vs_dense_fp32']:.2f} vs dense fp32")


def split(source, name, data_cfg, n, model):
    x, y = split_images(source, name, data_cfg, int(model.num_classes), n, seed=0)
    return x, y.numpy()


def make(variant: str, fp32: Path, path: Path, x_cal: torch.Tensor) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from prune.quantize import _Reader, quantize_onnx

    cal = lambda: (x_cal[s:s + 64].numpy() for s in range(0, len(x_cal), 64))  # noqa: E731
    if variant == "fp32":
        shutil.copyfile(fp32, path)
    elif variant in ("dynamic", "static"):
        quantize_onnx(fp32, path, variant, cal)
    elif variant in ("static_u8s8", "static_allops"):
        pre = path.with_suffix(".pre.onnx")
        quant_pre_process(str(fp32), str(pre))
        u8 = variant == "static_u8s8"
        quantize_static(str(pre), str(path), _Reader(_input(fp32), cal()),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"] if u8 else None,
                        activation_type=QuantType.QUInt8 if u8 else QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={} if u8 else {"ActivationSymmetric": True})
        pre.unlink()
    elif variant == "opt_dynamic":
        from onnxruntime.transformers import optimizer

        # num_heads/hidden_size 0: the optimizer reads them from the graph (a pruned model's vary per block)
        opt = optimizer.optimize_model(str(fp32), model_type="vit", num_heads=0, hidden_size=0)
        tmp = path.with_suffix(".opt.onnx")
        opt.save_model_to_file(str(tmp))
        quantize_onnx(tmp, path, "dynamic")
        tmp.unlink()
    else:
        raise SystemExit(f"unknown variant {variant}")


def _input(path: Path) -> str:
    from prune.export import ort_session

    return ort_session(path, providers=["CPUExecutionProvider"]).get_inputs()[0].name


def predictions(path: Path, x: torch.Tensor) -> np.ndarray:
    from prune.export import ort_session

    sess = ort_session(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[s:s + 256].numpy()})[0].argmax(-1) for s in range(0, len(x), 256)])


if __name__ == "__main__":
    main()
