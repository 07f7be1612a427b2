"""The checks that need a GPU, as one prepared script for a session that is lent a device machine.

What has never run (the CPU machine has no GPU): path discovery and fine-tuning on CUDA in float32 and bf16,
and ViT-B/16's discovery and pruning speed and memory. Steps, each timed; OUT/device_check.json is
rewritten after every step, and a step that fails is recorded with its error and the next one runs:

  env         torch, CUDA device, bf16 support
  discovery   ViT-B/16 (random weights: speed and memory do not depend on them) path discovery as the
              recipes run it (jas, scope tokens, top-20, m = 20) on `--images` random images, float32 and
              bf16 autocast: seconds per image, peak GPU memory, share of path neurons the two agree on
  train_step  one ViT-B/16 training step (batch `--batch-size`), float32 and bf16 autocast
  recipe      the shipped vit_b16_50pct.yaml end to end (`prune` CLI) on local random 224px images made
              here, with a 1-epoch bf16 fine-tune: each stage's seconds, the summary's widths and MACs

Prepare on the CPU machine (the device image lacks a few packages and reaches no registry):

    bash benchmarks/device_prepare.sh          # wheels -> .device/wheels (git-ignored, a few MB)

Run with the device tool (`carry: [".device"]`, timeout 600), the whole command:

    pip install -q --no-index --find-links .device/wheels datasets omegaconf pydantic torch-pruning; \\
        PYTHONPATH=. python3 benchmarks/device_check.py --out $OUT

(`;`, not `&&`: if an install fails, the env step still says what is there.)

`--smoke` runs every step on the CPU with a tiny model and a few images (seconds; the CI test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for device_check.json and the recipe run's summary")
    ap.add_argument("--steps", default="env,discovery,train_step,recipe")
    ap.add_argument("--images", type=int, default=16, help="discovery images")
    ap.add_argument("--batch-size", type=int, default=64, help="training-step batch")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a check of this script)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"smoke": args.smoke}
    for step in args.steps.split(","):
        t = time.perf_counter()
        try:
            report[step] = {**STEPS[step](args, out), "seconds": round(time.perf_counter() - t, 2)}
        except Exception as e:  # recorded, and the next step runs: one lease, as much learned as possible
            report[step] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"[{step}] {json.dumps(report[step], default=str)[:1500]}", flush=True)


def _model(args):
    import timm
    import torch

    if args.smoke:
        kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw), (3, 32, 32)
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False), (3, 224, 224)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib():
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)


def step_env(args, out):
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    for name in ("timm", "torch_pruning", "accelerate", "onnxruntime", "datasets"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:
            info[name] = f"missing ({type(e).__name__})"
    return info


def step_discovery(args, out):
    import torch

    from prune.paths import locate_paths

    model, shape = _model(args)
    model = model.to(_device()).eval()
    n = 2 if args.smoke else args.images
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, *shape, generator=g)
    labels = torch.randint(0, model.num_classes, (n,), generator=g)
    settings = dict(method="jas", steps=4 if args.smoke else 20, top_k=2 if args.smoke else 20, scope="tokens",
                    batch_size=None if args.smoke else 160, progress=False)
    res, paths = {}, {}
    locate_paths(model, images[:1], labels[:1], **{**settings, "steps": 2})  # warm-up (kernels, allocator)
    for name, amp in (("fp32", False), ("bf16", True)):
        _peak_reset()
        t = time.perf_counter()
        paths[name] = locate_paths(model, images, labels, amp=amp, **settings).neurons
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        res[name] = {"seconds_per_image": round(sec / n, 3), "peak_gib": _peak_gib()}
    a, b = paths["fp32"], paths["bf16"]
    agree = sum(len(set(a[i, l].tolist()) & set(b[i, l].tolist())) for i in range(a.shape[0]) for l in range(a.shape[1]))
    res["bf16_agrees_with_fp32"] = round(agree / a.numel(), 4)
    res["settings"] = {**settings, "images": n, "blocks": len(model.blocks)}
    return res


def step_train_step(args, out):
    import torch

    model, shape = _model(args)
    dev = _device()
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = 4 if args.smoke else args.batch_size
    x, y = torch.randn(b, *shape, device=dev), torch.randint(0, model.num_classes, (b,), device=dev)
    res = {"batch": b}
    for name in ("fp32", "bf16"):
        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        step()
        _peak_reset()
        t = time.perf_counter()
        reps = 2 if args.smoke else 10
        for _ in range(reps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        res[name] = {"step_s": round((time.perf_counter() - t) / reps, 4), "peak_gib": _peak_gib()}
    res["bf16_speedup"] = round(res["fp32"]["step_s"] / res["bf16"]["step_s"], 2)
    return res


def _local_images(root: Path, splits: dict[str, int], size: int, classes: int) -> Path:
    """Parquet shards of random PNG images (the layout of a Hugging Face image dataset)."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)})
    for split, n in splits.items():
        rows = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
            rows.append({"bytes": buf.getvalue(), "path": None})
        labels = g.integers(0, classes, n).tolist()
        datasets.Dataset.from_dict({"img": rows, "label": labels}, features=feats).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet"))
    return root


def step_recipe(args, out):
    from prune.cli import main as prune

    import tempfile

    work = out / "work" if args.smoke else Path(tempfile.mkdtemp(prefix="device_check_"))  # OUT keeps two files
    data, run = work / "data", work / "run"
    data.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        _local_images(data, {"train": 40, "validation": 20}, 32, 10)
        model = ["model.name=vit_tiny_patch16_224",
                 'model.kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, '
                 '"num_classes": 10}', "prune.round_to=null"]
        sizes = ["importance.calibration_images=16", "finetune.train_images=32", "prune.reconstruct_images=16",
                 "prune.reconstruct_head_images=16", "bench.batch_sizes=[1]", "bench.repeats=2"]
    else:
        _local_images(data, {"train": 2048, "validation": 512}, 224, 1000)
        model = []
        sizes = ["importance.calibration_images=1024", "finetune.train_images=2048", "prune.reconstruct_images=256",
                 "prune.reconstruct_head_images=1024", "bench.batch_sizes=[1,32]", "bench.repeats=10"]
    sets = [f"data.source={data}", "data.image_column=img", "model.pretrained=false",
            f"data.num_workers={0 if args.smoke else 8}",
            "finetune.epochs=1", "finetune.mixed_precision=bf16", "finetune.batch_size=64", "finetune.holdout=0.05",
            *model, *sizes]
    argv = ["--recipe", "vit_b16_50pct.yaml", "--out", str(run), "--quiet", *sum([["--set", s] for s in sets], [])]
    code = prune(argv)
    if code != 0:
        raise RuntimeError(f"prune exited {code}: prune {' '.join(argv)}")
    summary = json.loads((run / "summary.json").read_text())
    stages = {}
    for f in sorted(run.glob("*/stage.json")):
        s = json.loads(f.read_text())
        stages[s["stage"]] = round(s["seconds"], 2)
    (out / "recipe_summary.json").write_text(json.dumps(summary, indent=1))
    ft = json.loads((run / "finetune" / "metrics.json").read_text()) if (run / "finetune" / "metrics.json").is_file() else {}
    return {"stage_seconds": stages, "widths": summary.get("widths"), "macs": summary.get("macs"),
            "finetune_precision": ft.get("precision"), "latency": summary.get("latency")}


STEPS = {"env": step_env, "discovery": step_discovery, "train_step": step_train_step, "recipe": step_recipe}


if __name__ == "__main__":
    main()
