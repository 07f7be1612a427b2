"""What the shipped `vit_b16_50pct.yaml` costs, extrapolated from measurements, and the CPU latency of a
ViT-B/16-sized model with 50% of its FFN neurons removed (random weights; latency does not depend on them).

Path discovery: the per-image time of `locate_paths` on ViT-B/16 from `path_speed.py`'s JSON, scaled
linearly in the number of steps (each stage is m rows of forward + backward), times the recipe's
images. GPU rows are estimates from FLOPs under stated assumptions, not measurements.

Memory: the peak resident set of `locate_paths` on ViT-B/16 is measured here for a few chunk sizes
(`--memory-images` images x `--memory-steps` rows each, one chunk per call), fitted by a line in the
number of rows and read at the recipe's `paths.batch_size` rows.

    python benchmarks/vit_b16_extrapolation.py --speed-json benchmarks/results/path_speed_vit_b16.json
    python benchmarks/vit_b16_extrapolation.py --quick    # tiny model, the CI smoke test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed-json", default="benchmarks/results/path_speed_vit_b16.json")
    ap.add_argument("--recipe", default="vit_b16_50pct.yaml")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu-tflops", type=float, default=312.0, help="assumed peak bf16 TFLOP/s of one GPU (A100)")
    ap.add_argument("--gpu-utilisation", type=float, default=0.4, help="assumed fraction of peak reached")
    ap.add_argument("--memory-images", default="1,2,4", help="images per chunk for the memory fit ('' to skip)")
    ap.add_argument("--memory-steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from prune.bench import measure, torch_runner
    from prune.models import load_model
    from prune.budget import count_params_macs
    from prune.pruning import prune_ffn
    from prune.recipe import PruneCfg, load_recipe

    recipe = load_recipe(args.recipe)
    name = "vit_tiny_patch16_224" if args.quick else recipe.model.name.split(".")[0]
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2} if args.quick else {}
    out: dict = {"model": name, "recipe": args.recipe}

    if not args.quick:
        speed = json.loads(Path(args.speed_json).read_text())
        p = recipe.paths
        per_image_cpu = speed["locate_s_per_image"] * p.steps / speed["steps"]
        images = p.images_per_class * args.classes
        dense, data_cfg, _ = load_model(name, pretrained=False)
        _, macs = count_params_macs(dense, torch.randn(1, *data_cfg.input_size))
        # per image: L stages x m rows x (forward + input-gradient backward ~ 2 forwards) x 2 FLOPs per MAC,
        # times the measured ratio of locate_paths to that floor on this CPU
        flops = len(dense.blocks) * p.steps * 2 * (2 * macs) * speed["ratio_locate_over_bare"]
        gpu_s = flops / (args.gpu_tflops * 1e12 * args.gpu_utilisation)
        out["discovery"] = {
            "measured_cpu_s_per_image_at_steps": {"steps": speed["steps"], "s": speed["locate_s_per_image"]},
            "cpu_s_per_image": per_image_cpu, "images": images, "cpu_2_cores_hours": per_image_cpu * images / 3600,
            "flops_per_image": flops, "gpu_s_per_image": gpu_s, "one_gpu_hours": gpu_s * images / 3600,
            "eight_gpu_hours": gpu_s * images / 3600 / 8,
            "assumptions": f"{args.gpu_tflops} TFLOP/s peak bf16 at {args.gpu_utilisation:.0%}; steps scale linearly; "
                           "8 GPUs split the images evenly (accelerate launch) with no other overhead",
        }
    if args.memory_images:
        out["discovery_memory"] = discovery_memory(name, kwargs, recipe, [int(n) for n in args.memory_images.split(",")],
                                                   args.memory_steps)
    dense, data_cfg, _ = load_model(name, pretrained=False, **kwargs)
    pruned, _, _ = load_model(name, pretrained=False, **kwargs)
    example = torch.randn(1, *data_cfg.input_size)
    L, D = len(pruned.blocks), pruned.blocks[0].mlp.fc1.out_features
    prune_ffn(pruned, torch.rand(L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
              PruneCfg(ratio=0.5, scope="uniform"), example)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    lat = measure({"dense": torch_runner(dense), "pruned": torch_runner(pruned)}, data_cfg.input_size, sizes,
                  warmup=1, repeats=args.repeats)
    (p0, m0), (p1, m1) = count_params_macs(dense, example), count_params_macs(pruned, example)
    out["latency_pytorch_cpu"] = lat
    out["params"], out["macs"] = {"dense": p0, "pruned": p1}, {"dense": m0, "pruned": m1}
    for b in map(str, sizes):
        d, q = lat["dense"][b]["median_ms"], lat["pruned"][b]["median_ms"]
        print(f"batch {b:>3s}: dense {d:9.1f} ms, pruned {q:9.1f} ms, speed-up {d / q:.2f}x (MACs ratio {m1 / m0:.3f})")
    if "discovery" in out:
        d = out["discovery"]
        print(f"discovery: {d['cpu_s_per_image']:.1f} s/image on 2 CPU cores -> {d['cpu_2_cores_hours']:.0f} h for "
              f"{d['images']} images; estimated {d['one_gpu_hours']:.2f} h on one GPU, {d['eight_gpu_hours']:.2f} h on 8")
    if "discovery_memory" in out:
        m = out["discovery_memory"]
        print(f"discovery peak RSS: {m['fit_mb_per_row']:.1f} MB per row + {m['fit_intercept_mb']:.0f} MB; "
              f"{m['recipe_rows']} rows (the recipe's chunk) -> {m['recipe_peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def discovery_memory(name: str, kwargs: dict, recipe, images: list[int], steps: int) -> dict:
    """Peak RSS of one `locate_paths` chunk per size, a least-squares line in rows, read at the recipe's chunk."""
    from prune.memory import peak_memory
    from prune.models import load_model
    from prune.paths import locate_paths
    from prune.paths.locate import images_per_chunk

    model, data_cfg, _ = load_model(name, pretrained=False, **kwargs)
    gen = torch.Generator().manual_seed(0)
    points = []
    for n in images:
        x = torch.randn(n, *data_cfg.input_size, generator=gen)
        y = torch.randint(0, model.num_classes, (n,), generator=gen)
        with peak_memory() as mem:
            locate_paths(model, x, y, steps=steps, top_k=recipe.paths.top_k, scope=recipe.paths.scope,
                         batch_size=n * steps, progress=False)
        points.append({"images": n, "rows": n * steps, "peak_rss_mb": mem["host_rss_mb"]})
        print(f"locate_paths {n} images x {steps} steps: peak RSS {mem['host_rss_mb']:.0f} MB", flush=True)
    rows = torch.tensor([p["rows"] for p in points], dtype=torch.float64)
    mb = torch.tensor([p["peak_rss_mb"] for p in points], dtype=torch.float64)
    slope = float(((rows - rows.mean()) * (mb - mb.mean())).sum() / ((rows - rows.mean()) ** 2).sum())
    intercept = float(mb.mean() - slope * rows.mean())
    p = recipe.paths
    chunk = images_per_chunk(p.batch_size, p.steps, p.method) * p.steps  # rows per chunk, as discovery runs it
    return {"points": points, "steps": steps, "fit_mb_per_row": slope, "fit_intercept_mb": intercept,
            "recipe_rows": chunk, "recipe_peak_rss_mb": intercept + slope * chunk,
            "note": "host peak RSS of the whole process (libraries, model, activations), float32, CPU"}


if __name__ == "__main__":
    main()
