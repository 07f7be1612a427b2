"""`prune bench`: latency of a run (dense vs its final model), a pruned-model directory, a timm model
or an ONNX file."""

from __future__ import annotations

from ..errors import PruneError
from .options import check_options, usage


def run(args) -> int:
    import tempfile
    from pathlib import Path

    from ..bench import (load_any, machine_info, measure_until_stable, ort_runner, result_rows, threads_info,
                        torch_runner, write_csv)
    from ..export import export_onnx
    from ..io import write_json
    from ..budget import count_params_macs

    try:
        sizes = [int(v) for v in args.batch_sizes.split(",")]
        check_options(args, "bench", "batch_sizes", values={"batch_sizes": sizes})
    except (ValueError, PruneError):
        raise usage(f"--batch-sizes must be positive integers separated by commas, not {args.batch_sizes!r} "
                     "(the same rule as recipe key bench.batch_sizes)") from None
    check_options(args, "bench", "warmup", "repeats", "threads")
    args.writes = args.csv or args.json
    if args.threads:
        torch_threads(args.threads)
    root = Path(args.target)
    targets = {}
    if (root / "recipe.yaml").is_file():
        from ..artifacts import final_model_dir, run_recipe

        recipe = run_recipe(root)
        final = final_model_dir(root, recipe)
        targets["dense"] = load_any(recipe["model"]["name"], **recipe["model"].get("kwargs", {}))
        targets["pruned"] = load_any(str(final))
    else:
        targets[root.name or str(root)] = load_any(args.target)
    shapes = {t[2] for t in targets.values()}
    if len(shapes) > 1:
        raise usage(f"the models take different inputs {sorted(shapes)}; benchmark them one at a time")
    runners, shape, info, contenders = {}, None, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, obj, in_shape) in targets.items():
            shape = in_shape
            example = torch_example(in_shape)
            if kind == "torch":
                runners[f"{name} pytorch"] = torch_runner(obj)
                contenders[f"{name} pytorch"] = (name, "pytorch")
                params, macs = count_params_macs(obj, example)
                info[name] = {"params": params, "macs": macs}
                if args.onnx:
                    path = Path(tmp) / f"{name}.onnx"
                    export_onnx(obj, example, path)
                    runners[f"{name} onnxruntime"] = ort_runner(path, args.threads)
                    contenders[f"{name} onnxruntime"] = (name, "onnxruntime")
            else:
                runners[f"{name} onnxruntime"] = ort_runner(obj, args.threads)
                contenders[f"{name} onnxruntime"] = (name, "onnxruntime")
        result, noise = measure_until_stable(runners, shape, sizes, args.warmup, args.repeats,
                                             max_rounds=5 if args.until_stable else 1)
    print(f"input {tuple(shape)}, threads {args.threads or threads_info()['torch_threads']}, "
          f"median of {args.repeats} alternating runs" + (f", {noise['rounds']} rounds" if args.until_stable else ""))
    for name, per in info.items():
        print(f"  {name}: {per['params']:,} params, {per['macs']:,} MACs")
    for b in map(str, sizes):
        for name, r in result.items():
            mark = "~" if noise["noisy"] else " "
            print(f"  batch {b:>4s}  {name:28s}{mark}{r[b]['median_ms']:9.3f} ms  p90 {r[b]['p90_ms']:9.3f} ms  "
                  f"{r[b]['images_per_s']:10.1f} img/s")
    if noise["noisy"]:
        print(f"  warning: noisy measurement: {'; '.join(noise['reasons'])}; figures marked ~ are rough "
              "(stop other work on the machine, or use --until-stable)")
    if args.json or args.csv:
        runtimes = {"pytorch": {"threads": threads_info()["torch_threads"], "device": "cpu"},  # runners run on the CPU
                    "onnxruntime": {"threads": args.threads, "device": "cpu"}}
        rows = result_rows(result, contenders, shape, info, noise, machine_info(), runtimes)
        if args.csv:
            write_csv(args.csv, rows)
        if args.json:
            write_json(args.json, {"rows": rows, "latency": result, "noise": noise, "models": info, **threads_info()})
    return 0


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def torch_example(shape):
    import torch

    return torch.randn(1, *shape)
