"""The `prune` command. User errors print one line and exit non-zero; nothing is half-written."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from .errors import PruneError

DESCRIPTION = """\
prune: score a Vision Transformer's FFN neurons and attention heads by their attribution, and remove
the ones it can spare.

  prune --recipe quickstart.yaml [--set prune.macs_ratio=0.5 ...] [--out DIR]
        run a recipe: score units -> prune FFN neurons (and heads) -> evaluate -> fine-tune -> export,
        each stage a sub-directory of the run (unchanged stages are reused, so runs resume)
  prune convert MODEL --out DIR
                         a timm model (hub weights or a safetensors checkpoint) as a model directory
  prune recipes          list the recipes shipped with the package
  prune plan --recipe R
                         the per-block plan of a cut (heads and neurons kept, MACs, predicted ms), before surgery
  prune paths ...        discover neuron paths over a dataset on their own
  prune specialize RUN --classes cat,dog
                         a model for some classes only, from a finished run (its paths are reused)
  prune export TARGET    the ONNX file of a run's (or a pruned-model directory's) model, parity-checked
  prune bench TARGET     latency of a run, pruned model, timm model or ONNX file

  several processes (GPUs; on a CPU-only machine they use gloo):
  accelerate launch --multi_gpu --num_processes 8 -m prune.cli --recipe vit_b16_50pct.yaml
"""


def _paths_parser(sub) -> None:
    p = sub.add_parser(
        "paths", help="discover neuron paths over a dataset",
        description="Locate each image's influential neuron path (joint attribution, layer by layer) for "
                    "N images per class, aggregate per class, and write paths.safetensors, "
                    "stats.safetensors and summary.json to --out.",
        epilog="examples:\n"
               "  prune paths --out runs/digits_paths                      # embedded digits model and data\n"
               "  prune paths --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\\n"
               "      --split test --images-per-class 10 --top-k 5 --out runs/cifar_paths",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits-vit",
                   help="timm model name, a directory with config.json + model.safetensors, or 'digits-vit' "
                        "(embedded, the default)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="build a timm model with random weights instead of downloading them")
    p.add_argument("--data", default="digits",
                   help="Hugging Face dataset id, a local dataset directory (e.g. parquet shards), or 'digits' "
                        "(embedded, the default)")
    p.add_argument("--split", default="test", help="dataset split to draw images from (default: test)")
    p.add_argument("--image-column", default=None, help="image column (default: detected from the features)")
    p.add_argument("--label-column", default=None, help="label column (default: detected from the features)")
    p.add_argument("--images-per-class", type=int, default=10, help="images drawn from each class (default: 10)")
    p.add_argument("--method", default="jas", choices=_choices("paths", "method"),
                   help="jas (default) = the paper's layer-progressive joint attribution; the others are its baselines")
    p.add_argument("--steps", type=int, default=20, help="integrated-gradient steps m (default: 20)")
    p.add_argument("--top-k", type=int, default=1, help="neurons per layer on each path (default: 1, the paper's)")
    p.add_argument("--scope", default="auto", choices=_choices("paths", "scope"),
                   help="neurons read at the CLS token (cls, the paper's) or as channels over all tokens (tokens); "
                        "auto (default) = cls when the model reads its CLS token")
    p.add_argument("--target", default="label", choices=_choices("paths", "target"),
                   help="attribute the probability of the true label (default) or of the prediction")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows (images x steps) per chunk; bounds peak memory (default: 4 images per chunk)")
    p.add_argument("--seed", type=int, default=0, help="image sampling and random-path seed (default: 0)")
    p.add_argument("--no-candidates", dest="keep_candidates", action="store_false",
                   help="do not keep the dense [L, D] per-image scores (saves memory on large runs)")
    p.add_argument("--out", required=True, help="output directory (required)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_paths(args) -> int:
    from .data import check_source
    from .paths.discover import DiscoverySettings, discover

    args.writes = args.out
    _check_options(args, "paths", "images_per_class", "steps", "top_k", "batch_size", "seed")
    check_source(args.data)
    settings = DiscoverySettings(method=args.method, steps=args.steps, top_k=args.top_k, scope=args.scope,
                                 target=args.target, images_per_class=args.images_per_class,
                                 batch_size=args.batch_size, seed=args.seed, keep_candidates=args.keep_candidates)
    summary = discover(args.model, args.data, args.split, settings, args.out, pretrained=args.pretrained,
                       image_column=args.image_column, label_column=args.label_column, progress=not args.quiet)
    short = {k: summary[k] for k in ("images", "mean_jas", "mean_target_prob", "probability_deviation",
                                     "seconds", "images_per_second")}
    print(json.dumps(short, indent=2))
    print(f"wrote {args.out}/paths.safetensors, stats.safetensors, summary.json")
    return 0


def _usage(msg: str) -> PruneError:
    from .errors import ConfigError

    return ConfigError(msg)


# Options a subcommand shares with a recipe key take their range (and choices) from the recipe schema
# (`prune/recipe.py`), so `--opset` and `export.opset`, `--repeats` and `bench.repeats`, ... cannot disagree.
def _schema_field(section: str, field: str):
    from .recipe import Recipe, _section

    cls = _section(Recipe.model_fields[section].annotation)
    return cls, cls.model_fields[field]


def _choices_of_list(section: str, field: str) -> list[str]:
    """The values a recipe key of type `list[Literal[...]]` allows."""
    import typing

    return list(typing.get_args(typing.get_args(_schema_field(section, field)[1].annotation)[0]))


def _choices(section: str, field: str) -> list[str]:
    """The values a recipe key of type `Literal[...]` allows, for an option's `choices`."""
    import typing

    return list(typing.get_args(_schema_field(section, field)[1].annotation))


def _range(info) -> str | None:
    """A field's numeric bounds in words ("at least 1", "in [0, 1)"), from its constraints."""
    bound = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in info.metadata
             if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}
    low = ("[", bound["ge"]) if "ge" in bound else ("(", bound["gt"]) if "gt" in bound else None
    high = (bound["le"], "]") if "le" in bound else (bound["lt"], ")") if "lt" in bound else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else ("positive" if low[1] == 0 else f"more than {low[1]}")
    if high:
        return f"at most {high[0]}" if high[1] == "]" else f"less than {high[0]}"
    return None


def _check_options(args, section: str, *fields: str, flags: dict[str, str] | None = None,
                   values: dict | None = None) -> None:
    """Validate the options behind `fields` (`args.<field>`, or `values[field]`; flag `--field-name` unless
    `flags` says otherwise) with the recipe section's own field constraints: one ConfigError naming the flag,
    its allowed range and the recipe key that shares it."""
    from pydantic import ValidationError

    flags, given = flags or {}, {f: (values or {}).get(f, getattr(args, f, None)) for f in fields}
    cls = _schema_field(section, fields[0])[0]
    try:
        cls.model_validate({f: v for f, v in given.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0])
        flag = flags.get(field, "--" + field.replace("_", "-"))
        allowed = _range(cls.model_fields[field])
        value = given[field]
        what = f"must be {allowed}" if allowed else err["msg"].removeprefix("Value error, ").lower()
        raise _usage(f"{flag} {what}, not {value} (the same range as recipe key {section}.{field})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"prune {__version__}")
    parser.add_argument("--recipe", help="recipe YAML file, or the name of a shipped recipe (see `prune recipes`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set prune.macs_ratio=0.5 (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="rerun this stage even if its inputs are unchanged: paths, importance, prune, baseline, "
                             "evaluate, reconstruct, finetune, export, bench, report, or all (repeatable)")
    parser.add_argument("--update", action="store_true",
                        help="accept a changed recipe in an existing run directory; unchanged stages are reused")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _paths_parser(sub)
    sub.add_parser("recipes", help="list the recipes shipped with the package",
                   description="List the recipes shipped with the package; run one by name.",
                   epilog="example:\n  prune recipes && prune --recipe quickstart.yaml",
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = sub.add_parser(
        "specialize", help="prune a finished run's model for a subset of its classes (paths reused)",
        description="Make a model that predicts only some classes: the run's recipe with prune.classes set, in a "
                    "new run directory that starts from the run's path statistics (no rediscovery), so only "
                    "scoring, pruning, evaluation and the later stages run. Example:\n\n"
                    "  prune specialize runs/cifar10 --classes cat,dog --set prune.macs_ratio=0.8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("run", help="a finished run directory (made by prune --recipe)")
    sp.add_argument("--classes", required=True,
                    help="comma-separated class indices or names (the dataset's ClassLabel names), in output order")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value of the run's recipe, e.g. --set prune.macs_ratio=0.8 (repeatable)")
    sp.add_argument("--out", default=None, help="run directory for the specialised model (default: RUN-classes-...)")
    sp.add_argument("--update", action="store_true",
                    help="accept a changed recipe in an existing --out; unchanged stages are reused")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    pl = sub.add_parser(
        "plan", help="the per-block plan of a recipe's cut, before any surgery",
        description="Score the units as the recipe says (the paths and importance stages of its run directory, "
                    "reused when done), then print, per block, the heads and FFN neurons the cut keeps, the MACs it "
                    "removes and, with a measured latency table (prune.latency), the predicted branch latency, "
                    "with the predicted speed-up; an unreachable target is an error before any work. The plan is "
                    "written to RUN/plan.json (or --json). Example:\n\n"
                    "  prune plan --recipe quickstart.yaml --set 'prune.units=[ffn,heads]' --set prune.latency_ratio=0.4 "
                    "--set prune.max_layer_ratio=1.0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--recipe", required=True, help="recipe YAML file, or the name of a shipped recipe")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe value (repeatable)")
    pl.add_argument("--out", help="run directory (default: runs/<recipe name>); a later prune --recipe reuses it")
    pl.add_argument("--json", help="also write the plan here")
    pl.add_argument("--update", action="store_true",
                    help="accept a changed recipe in an existing run directory; unchanged stages are reused")
    pl.add_argument("--quiet", action="store_true", help="no progress bars")
    cv = sub.add_parser(
        "convert", help="turn a timm model (hub weights or a safetensors checkpoint) into a model directory",
        description="Write DIR/config.json (architecture, model_kwargs, mean, std, interpolation, crop_pct) and "
                    "DIR/model.safetensors, the model directory a recipe's model.name takes. MODEL is a timm "
                    "model name; its weights come from the timm hub (--pretrained) or from --checkpoint, a "
                    "safetensors state dict (pickled .pth/.bin files are refused: prune never unpickles). The "
                    "model is built and checked as a ViT prune can prune before anything is written. Examples:\n\n"
                    "  prune convert vit_small_patch16_224.augreg_in21k_ft_in1k --pretrained --out models/vit_s16\n"
                    "  prune convert vit_tiny_patch16_224 --kwargs '{\"img_size\": 32, \"patch_size\": 4, "
                    "\"num_classes\": 10}' \\\n      --checkpoint weights.safetensors --out models/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("model", help="timm model name, e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k")
    cv.add_argument("--out", required=True, help="model directory to write (must not exist)")
    cv.add_argument("--pretrained", action="store_true", help="timm hub weights (downloaded once, then cached)")
    cv.add_argument("--checkpoint", default=None, help="a safetensors file with the model's state dict")
    cv.add_argument("--kwargs", default="{}", help="JSON of timm.create_model arguments (img_size, num_classes, ...)")
    cv.add_argument("--mean", default=None, help="input mean, comma-separated (default: timm's for the model)")
    cv.add_argument("--std", default=None, help="input std, comma-separated (default: timm's for the model)")
    ex = sub.add_parser(
        "export", help="write the ONNX file of a pruned model or a run's final model, checked with onnxruntime",
        description="Export for deployment: dynamic batch axis, weights inline below 1 GiB (external data above), "
                    "then onnxruntime runs the file at batch 1 and 8 and the export fails if its logits differ from "
                    "PyTorch by more than --atol (the same code as the recipe's export stage). A run directory "
                    "exports its final model (fine-tuned if it was, else pruned) and checks it on the first 8 "
                    "images of its evaluation split; a pruned-model directory is checked on seeded random "
                    "inputs. The file appears only after the check passed. --quantize adds int8 files beside it "
                    "(OUT.int8-dynamic.onnx, OUT.int8-static.onnx), each judged by top-1 and agreement with the fp32 "
                    "file on the evaluation images (a run's, or --data's test split). Examples:\n\n"
                    "  prune export runs/quickstart --out quickstart.onnx\n"
                    "  prune export runs/quickstart --out quickstart.onnx --quantize dynamic,static",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("target", help="a run directory (prune --recipe --out) or a pruned-model directory (structure.json)")
    ex.add_argument("--out", default=None, help="ONNX file to write (default: <target directory name>.onnx here)")
    ex.add_argument("--opset", type=int, default=18,
                    help=f"ONNX opset, {_range(_schema_field('export', 'opset')[1])} (default: 18)")
    ex.add_argument("--atol", type=float, default=1e-4,
                    help="max |onnxruntime - PyTorch| of the logits, scaled by max |logit| when above 1 (default: 1e-4)")
    ex.add_argument("--quantize", default="", metavar="MODES",
                    help="also write int8 files: dynamic, static or dynamic,static (static calibrates on training images)")
    ex.add_argument("--data", default=None,
                    help="for a pruned-model directory: dataset (train split calibrates, test split judges int8 files)")
    ex.add_argument("--images", type=int, default=1000,
                    help="evaluation images that judge an int8 file (default: 1000)")
    ex.add_argument("--max-int8-drop", type=float, default=0.01,
                    help="flag an int8 file losing more top-1 than this against fp32, and exit 1 (default: 0.01)")
    b = sub.add_parser("bench", help="latency of a model, pruned model, ONNX file or run directory",
                       description="Measure latency and throughput (median and p90 of alternating runs after "
                                   "warm-up). TARGET is a run directory (dense vs its pruned model), a pruned-model "
                                   "directory, a timm name or model directory, or an .onnx file.",
                       epilog="examples:\n"
                              "  prune bench runs/quickstart --onnx                 # dense vs pruned, PyTorch and onnxruntime\n"
                              "  prune bench runs/quickstart/export/pruned.onnx     # an ONNX file\n"
                              "  prune bench vit_base_patch16_224 --batch-sizes 1,8 # a timm model (random weights)\n"
                              "  prune bench runs/quickstart --onnx --csv bench.csv # rows with timm's column names",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("target", help="run dir, pruned-model dir, model spec or .onnx file")
    b.add_argument("--onnx", action="store_true", help="also run onnxruntime (exports a torch model to a temp file)")
    b.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    b.add_argument("--warmup", type=int, default=3, help="untimed runs before measuring (default: 3)")
    b.add_argument("--repeats", type=int, default=20, help="timed runs of every contender (default: 20)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch / onnxruntime intra-op threads (default: torch's own choice)")
    b.add_argument("--until-stable", action="store_true",
                   help="repeat the measurement (up to 5 rounds) until no median moves more than 3%%")
    b.add_argument("--json", default=None,
                   help="also write the measurements to this file (with `rows`: the --csv rows)")
    b.add_argument("--csv", default=None,
                   help="also write one row per model, runtime and batch size to this CSV file, with timm's "
                        "benchmark.py column names (model, infer_samples_per_sec, infer_step_time, ...) "
                        "and p50_ms, p90_ms, p99_ms, library versions, CPU and threads")
    return parser


def _run_bench(args) -> int:
    import tempfile
    from pathlib import Path

    from .bench import (load_any, machine_info, measure_until_stable, ort_runner, result_rows, threads_info,
                        torch_runner, write_csv)
    from .export import export_onnx
    from .io import write_json
    from .budget import count_params_macs

    try:
        sizes = [int(v) for v in args.batch_sizes.split(",")]
        _check_options(args, "bench", "batch_sizes", values={"batch_sizes": sizes})
    except (ValueError, PruneError):
        raise _usage(f"--batch-sizes must be positive integers separated by commas, not {args.batch_sizes!r} "
                     "(the same rule as recipe key bench.batch_sizes)") from None
    _check_options(args, "bench", "warmup", "repeats", "threads")
    args.writes = args.csv or args.json
    if args.threads:
        torch_threads(args.threads)
    root = Path(args.target)
    targets = {}
    if (root / "recipe.yaml").is_file():
        from .artifacts import final_model_dir, run_recipe

        recipe = run_recipe(root)
        final = final_model_dir(root, recipe)
        targets["dense"] = load_any(recipe["model"]["name"], **recipe["model"].get("kwargs", {}))
        targets["pruned"] = load_any(str(final))
    else:
        targets[root.name or str(root)] = load_any(args.target)
    shapes = {t[2] for t in targets.values()}
    if len(shapes) > 1:
        raise _usage(f"the models take different inputs {sorted(shapes)}; benchmark them one at a time")
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


def _run_recipe(args) -> int:
    from .pipeline import STAGES, Pipeline
    from .recipe import load_recipe, validate_environment

    force = set(args.force)
    unknown = force - set(STAGES) - {"all"}
    if unknown:
        raise _usage(f"--force {sorted(unknown)[0]}: not a stage; stages are {', '.join(STAGES)} (or all)")
    if "all" in force:
        force = set(STAGES)
    recipe = load_recipe(args.recipe, args.overrides)
    validate_environment(recipe)
    out = args.out or f"runs/{recipe.name}"
    args.writes = out
    summary = Pipeline(recipe, out, update=args.update, progress=not args.quiet).run(force)
    from . import dist

    runs = summary["targets"] if "sweep" in summary else {None: summary}
    if dist.is_main():
        if "sweep" in summary:
            _print_sweep(summary, out, recipe.prune.swept())
        else:
            _print_summary(summary, out)
    from .report import int8_warnings

    warned = [w for s in runs.values() for w in int8_warnings(s)]
    if recipe.export.fail_on_int8_drop and warned:
        print(f"prune: error: {warned[0]} (export.fail_on_int8_drop is set)", file=sys.stderr)
        return 1
    return 0


def _print_sweep(summary: dict, out: str, swept: str) -> None:
    """The sweep's points, fastest first, the recommended one, and every target's warnings."""
    from .report import int8_warnings, noise_warnings

    s = summary["sweep"]
    for target, m in summary["targets"].items():
        for w in int8_warnings(m) + noise_warnings(m):
            print(f"  warning ({target}): {w}")
    if not s["batch_sizes"]:
        print(f"\nsweep over prune.{swept}: no latency was measured (bench is off), so no front; {out}/sweep/")
        return
    b = s["batch_sizes"][0]
    print(f"\nsweep over prune.{swept} ({s['engine']}, batch {b}; * on the front):")
    for p in sorted(s["points"], key=lambda p: p["ms"][b]):
        print(f"  {'*' if p['front'][b] else ' '} {p['name']:34s} top-1 {p['top1']:.4f} "
              f"({(p['top1'] - s['dense_top1']) * 100:+.2f})  {p['ms'][b]:8.3f} ms  {p['speedup'][b]:.2f}x")
    rec = s["recommended"]
    if rec is None:
        print(f"  no artifact is within {s['max_drop'] * 100:.1f} points of dense (report.max_drop)")
    else:
        p = s["points"][rec]
        print(f"  recommended (fastest within {s['max_drop'] * 100:.1f} points of dense): {p['name']}, "
              f"{p['speedup'][b]:.2f}x at batch {b}, {(p['top1'] - s['dense_top1']) * 100:+.2f} points; "
              f"{p['files']['latency']['path'] if isinstance(p['files']['latency'], dict) else ''}")
    print(f"sweep report: {out}/sweep/sweep.md (front.png, sweep.json); summary.json lists every point")


def _run_plan(args) -> int:
    from pathlib import Path

    from .io import write_json
    from .pipeline import Pipeline
    from .budget import render
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or f"runs/{recipe.name}"
    args.writes = out
    plans = Pipeline(recipe, out, update=args.update, progress=not args.quiet).plan()
    from .report import describe_target

    for label, plan in plans:
        target = recipe if label is None else dict(recipe.sweep())[label]
        what = describe_target({"prune": target.prune.model_dump(),
                                "macs": {"dense": plan["macs_dense"], "pruned": plan["macs_planned"]},
                                "latency_predicted": {"dense_ms": plan["ms_dense"], "pruned_ms": plan["ms_planned"]}
                                if "ms_dense" in plan else None})
        print(f"\n{recipe.name}{'' if label is None else f' ({label})'}: {recipe.importance.kind} importance, "
              f"{what}: reachable")
        for line in render(plan):
            print("  " + line)
    result = plans[0][1] if plans[0][0] is None else {label: plan for label, plan in plans}
    write_json(Path(out) / "plan.json", result)
    if args.json:
        write_json(args.json, result)
    print(f"wrote {out}/plan.json" + (f" and {args.json}" if args.json else ""))
    return 0


def _print_summary(s: dict, out: str) -> None:
    from .report import artifact_rows, int8_warnings

    params, macs = s["params"], s["macs"]
    arts = artifact_rows(s)
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [("", *(a["name"] for a in arts)),
            ("top-1", *(fmt(a["top1"], ".4f") for a in arts)),
            ("top-5", *(fmt(a["top5"], ".4f") for a in arts)),
            ("params", *(f"{params[a['structure']]:,}" for a in arts)),
            ("MACs", *(f"{macs[a['structure']]:,}" for a in arts))]
    for eng, lat in s.get("latency", {}).items():
        for b in lat["dense"]:
            rows.append((f"{eng} b{b} ms", *(fmt(lat[a["latency"][eng]][b]["median_ms"], ".2f")
                                              if a["latency"].get(eng) else "-" for a in arts)))
    from .report import describe_target

    print(f"\n{s['recipe']}: {s['importance']} importance, {describe_target(s)} "
          f"({s['prune']['scope']}, compensate={s['prune']['compensate']})")
    if s.get("classes") is not None:
        print(f"  specialised to classes {s['classes']} (original ids; accuracy on their test images only)")
    for name, *vals in rows:
        print(f"  {name:20s}" + "".join(f"{v:>{max(14, len(h) + 2)}s}" for v, h in zip(vals, rows[0][1:])))
    from .report import noise_warnings

    for w in int8_warnings(s) + noise_warnings(s):
        print(f"  warning: {w}")
    rec = (s.get("finetune") or {}).get("recovery")
    if rec:
        print(f"  recovery on {rec['holdout_images']} held-out images: one-shot {rec['oneshot']:.4f}, best "
              f"{rec['best']:.4f} (epoch {rec['best_epoch']}), last {rec['last']:.4f}; kept the best")
    print(f"run directory: {out} (summary.json, report/report.md, one directory per stage)")


def _run_specialize(args) -> int:
    import re
    import shutil
    from pathlib import Path

    from .pipeline import Pipeline
    from .recipe import Recipe, load_recipe, validate_environment

    run = Path(args.run)
    if not (run / "recipe.yaml").is_file():
        raise _usage(f"{run} is not a prune run directory (no recipe.yaml); give the --out of a finished prune --recipe run")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise _usage("--classes is empty; give class indices or names separated by commas")
    base = load_recipe(str(run / "recipe.yaml"), args.overrides)
    data = base.model_dump(mode="json")
    data["prune"]["classes"] = [int(c) if c.isdigit() else c for c in classes]
    pr = data["prune"]
    named = any(o.split("=", 1)[0].strip() == "prune.max_layer_ratio" for o in args.overrides)
    if (not named and pr.get("macs_ratio") is None and pr["scope"] == "global"
            and isinstance(pr["max_layer_ratio"], (int, float)) and pr["max_layer_ratio"] < pr["ratio"] + 0.05):
        # a specialised model removes most units; a cap at the ratio itself is unreachable once every block
        # keeps its rounded-up share, so give the cap room unless the user set it
        pr["max_layer_ratio"] = min(1.0, round(pr["ratio"] + 0.05, 4))
        print(f"[specialize] prune.max_layer_ratio {pr['max_layer_ratio']} (the ratio + 0.05) so that prune.ratio "
              f"{pr['ratio']} is reachable; set prune.max_layer_ratio to choose another")
    from pydantic import ValidationError

    from .recipe import _describe

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _usage(_describe(e.errors()[0])) from None
    validate_environment(recipe)
    out = Path(args.out or f"{run}-classes-{re.sub(r'[^A-Za-z0-9_.-]+', '_', '-'.join(classes))}")
    args.writes = out
    paths = run / "paths"
    reuse = (paths / "stage.json").is_file() and not (out / "paths").exists()
    pipeline = Pipeline(recipe, out, update=args.update, progress=not args.quiet)  # checks --out first
    if reuse:  # the paths stage does not depend on prune.classes: its key matches, so it is reused
        shutil.copytree(paths, out / ".paths.copy")
        (out / ".paths.copy").rename(out / "paths")
    summary = pipeline.run()
    _print_summary(summary, str(out))
    return 0


def _run_export(args) -> int:
    import json
    from pathlib import Path

    import torch

    from .checkpoint import is_pruned_dir, load_pruned
    from .export import export_checked

    target = Path(args.target)
    _check_options(args, "export", "opset", "atol", "max_int8_drop")
    _check_options(args, "data", "eval_images", flags={"eval_images": "--images"}, values={"eval_images": args.images})
    modes = [m.strip() for m in args.quantize.split(",") if m.strip()]
    try:
        _check_options(args, "export", "quantize", values={"quantize": modes})
    except PruneError:
        raise _usage(f"--quantize {args.quantize}: give {' or '.join(_choices_of_list('export', 'quantize'))}, "
                     "or both separated by a comma (the same modes as recipe key export.quantize)") from None
    run = (target / "recipe.yaml").is_file()
    if run:
        from .artifacts import final_model_dir

        model_dir = final_model_dir(target)
    elif is_pruned_dir(target):
        model_dir = target
    else:
        raise _usage(f"{target} is neither a run directory (recipe.yaml) nor a pruned-model directory "
                     "(structure.json); give the --out of a prune --recipe run or one of its prune/finetune directories")
    out = Path(args.out) if args.out else Path(f"{target.resolve().name}.onnx")
    if out.suffix != ".onnx":
        raise _usage(f"--out {out}: give a file name ending in .onnx")
    if out.is_dir():
        raise _usage(f"--out {out} is a directory; give a file name ending in .onnx")
    if "static" in modes and not run and args.data is None:
        raise _usage("--quantize static calibrates on training images: give --data (a dataset with train and test "
                     "splits), or export from a run directory")
    model, structure = load_pruned(model_dir)
    size = structure["data_config"].get("input_size") or [3, *model.patch_embed.img_size]
    images = _run_images(target, structure) if run else None
    if images is None:
        images = torch.randn(8, *size, generator=torch.Generator().manual_seed(0))
    classes = structure.get("classes")
    args.writes = out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    from .export import deploy_metadata

    names = _class_names(target if run else None, args.data)
    meta = export_checked(model, images, out, opset=args.opset, atol=args.atol,
                          metadata=deploy_metadata(structure["data_config"], names, classes))
    worst = max(v["max_abs_diff"] for k, v in meta["parity"].items() if k.startswith("batch_"))
    print(f"wrote {out} ({meta['bytes']:,} bytes, opset {args.opset}, weights "
          f"{'inline' if meta['weights_inline'] else 'external'}) from {model_dir}; "
          f"max |onnxruntime - PyTorch| {worst:.2e} at batch 1 and 8 on {'evaluation images' if run else 'random inputs'}")
    if classes is not None:
        print(f"outputs are the original classes {classes} (ONNX metadata prune.classes)")
    if not modes:
        return 0
    from .quantize import onnx_predictions

    source = target if run else None
    cal = _split_data(source, args.data, "train", structure, 256) if "static" in modes else None
    calibration = None if cal is None else (lambda: (cal[0][s:s + 64].numpy() for s in range(0, len(cal[0]), 64)))
    evals = _split_data(source, args.data, "eval", structure, args.images)
    batches = None if evals is None else (
        lambda: ((evals[0][s:s + 64].numpy(), evals[1][s:s + 64].numpy()) for s in range(0, len(evals[1]), 64)))
    reference = None if evals is None else onnx_predictions(out, batches())  # fp32, once for every mode
    flagged = [_export_int8(out, mode, calibration, batches, reference, args) for mode in modes]
    return 1 if any(flagged) else 0


def _export_int8(fp32, mode: str, calibration, batches, reference, args) -> bool:
    """Quantise `fp32` with `mode`, judge it against the fp32 predictions `reference` on `batches()`, print the
    verdict; True if flagged."""
    from .quantize import int8_name, judge, quantize_onnx

    q = fp32.with_name(f"{int8_name(fp32.stem, mode)}.onnx")
    meta = quantize_onnx(fp32, q, mode, calibration)
    if reference is None:
        print(f"wrote {q} ({meta['bytes']:,} bytes, {meta['format']}); not judged: no evaluation images "
              "(give --data, or export from a run directory)")
        return False
    j = judge(q, reference, batches(), args.max_int8_drop)
    print(f"wrote {q} ({meta['bytes']:,} bytes, {meta['format']}): top1 {j['top1']:.4f} vs fp32 {j['fp32_top1']:.4f} "
          f"on {j['images']} evaluation images, agreement {j['agreement']:.4f}")
    if not j["within_threshold"]:
        print(f"prune: error: {q.name} loses {j['drop'] * 100:.2f} points top-1 against {fp32.name} (more than "
              f"--max-int8-drop {args.max_int8_drop}): not recommended for deployment", file=sys.stderr)
    return not j["within_threshold"]


def _split(run, data: str | None, which: str):
    """`(dataset, image column, label column, split name)` of a run's train/eval split, or of --data's
    train/test split; None when there is neither."""
    import yaml

    from .data import find_columns, load_split

    if run is not None:
        d = (yaml.safe_load((run / "recipe.yaml").read_text()) or {}).get("data", {})
        source, split = d["source"], d["train_split" if which == "train" else "eval_split"]
        columns = (d.get("image_column"), d.get("label_column"))
    elif data is not None:
        source, split, columns = data, "train" if which == "train" else "test", (None, None)
    else:
        return None
    ds = load_split(source, split)
    return (ds, *find_columns(ds, *columns), split)


def _split_data(run, data: str | None, which: str, structure, n: int, sample: bool = True):
    """`n` prepared images and labels of `_split` (a seeded sample, or the first `n` rows)."""
    import random

    from .data import make_transform, stack_rows
    from .models import DataConfig

    found = _split(run, data, which)
    if found is None:
        return None
    ds, img, lab, split = found
    cfg = structure["data_config"]
    tf = make_transform(DataConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                                   cfg["interpolation"], cfg["crop_pct"]))
    k = min(n, len(ds))
    rows = sorted(random.Random(0).sample(range(len(ds)), k)) if sample else list(range(k))
    return stack_rows(ds, tf, img, lab, split, rows)


def _class_names(run, data: str | None) -> list[str] | None:
    """Class names of a run's dataset (or of --data), from its label feature; None when unknown."""
    from .classes import class_names
    from .errors import PruneError

    try:
        found = _split(run, data, "train")
        return None if found is None else class_names(found[0], found[2])
    except (PruneError, KeyError, OSError):
        return None


def _run_images(run, structure):
    """The first 8 images of the run's evaluation split, prepared as the model expects (None if unavailable)."""
    from .errors import PruneError

    try:
        return _split_data(run, None, "eval", structure, 8, sample=False)[0]
    except (PruneError, KeyError, OSError):
        return None


def _run_convert(args) -> int:
    import shutil
    from pathlib import Path

    out = Path(args.out)
    args.writes = out.parent
    if out.exists():
        raise _usage(f"--out {out} exists; give a new directory")
    try:
        kwargs = json.loads(args.kwargs)
        assert isinstance(kwargs, dict)
    except (ValueError, AssertionError):
        raise _usage(f"--kwargs must be a JSON object of timm.create_model arguments, not {args.kwargs!r}") from None
    if args.pretrained and args.checkpoint:
        raise _usage("give --pretrained (timm hub weights) or --checkpoint (a safetensors file), not both")
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is not None:
        if not (ckpt.exists() or ckpt.is_symlink()):
            raise _usage(f"--checkpoint {ckpt} does not exist")
        if ckpt.suffix != ".safetensors":
            raise _usage(f"--checkpoint {ckpt}: give a safetensors file; prune never unpickles .pth/.bin files "
                         "(save one with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'))")
    stats = {}
    for key in ("mean", "std"):
        v = getattr(args, key)
        if v is not None:
            try:
                stats[key] = [float(x) for x in v.split(",")]
                assert len(stats[key]) == 3
            except (ValueError, AssertionError):
                raise _usage(f"--{key} must be three numbers separated by commas, not {v!r}") from None
    import timm
    from timm.data import resolve_data_config

    from .checkpoint import load_weights, write_model_dir
    from .models import ViTAdapter, _create

    model = _create(timm, args.model, pretrained=args.pretrained, **kwargs)
    if ckpt is not None:
        load_weights(model, ckpt, f"{args.model} {kwargs}")
    ViTAdapter(model.eval())  # a ViT prune can prune, or one error line naming what it lacks
    cfg = resolve_data_config(model=model)
    config = {"architecture": args.model, "model_kwargs": kwargs,
              "mean": stats.get("mean", list(cfg["mean"])), "std": stats.get("std", list(cfg["std"])),
              "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": float(cfg.get("crop_pct", 1.0))}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_model_dir(tmp, model.state_dict(), config)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}/config.json and model.safetensors ({sum(p.numel() for p in model.parameters()):,} params, "
          f"{len(model.blocks)} blocks); use it with --set model.name={out}")
    return 0


def _list_recipes(args) -> int:
    from .recipe import PACKAGED, packaged_recipes

    for name in packaged_recipes():
        import yaml

        desc = (yaml.safe_load((PACKAGED / name).read_text()) or {}).get("description", "")
        print(f"{name:28s} {desc}")
    return 0


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM, raised in the main thread so that every `finally` runs: a stage's
    temporary directory is removed and the run directory's lock released before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM raise `Interrupted` (once: a second signal while the first one's cleanup runs is
    ignored, so the cleanup completes); the previous handlers come back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _disk_full(e: BaseException, args) -> str | None:
    """The one-line message for an exception caused by a full disk (ENOSPC / EDQUOT anywhere in its chain,
    or a library's wrapped "No space left on device"); None for anything else."""
    import errno

    seen, cause, filename = set(), e, None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            filename = cause.filename
            break
        text = str(cause)
        if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    from pathlib import Path

    where = getattr(args, "writes", None) or (Path(filename).parent if filename else None)
    where = f" writing to {where}" if where else ""
    return (f"no space left on device{where}: free space there and rerun the same command (completed stages are "
            "kept and reused; nothing partial was written)")


def main(argv: list[str] | None = None) -> int:
    import signal

    with _interruptible():
        try:
            return _main(argv)
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            print(f"prune: interrupted ({signal.Signals(signum).name}); completed stages are kept and nothing "
                  "partial was written: rerun the same command to resume", file=sys.stderr)
            return 128 + signum


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and not args.recipe:
        parser.print_help()
        return 2
    try:
        if args.quiet:
            import datasets

            datasets.disable_progress_bars()
        if args.command is None:
            return _run_recipe(args)
        return {"paths": _run_paths, "recipes": _list_recipes, "bench": _run_bench,
                "specialize": _run_specialize, "export": _run_export, "convert": _run_convert,
                "plan": _run_plan}[args.command](args)
    except PruneError as e:
        msg = str(e)
        if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep the original message
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        print(f"prune: error: {msg}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        from .errors import DiskFullError

        full = _disk_full(e, args)
        if full is not None:
            print(f"prune: error: {full}", file=sys.stderr)
            return DiskFullError.exit_code
        if isinstance(e, OSError):
            print(f"prune: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
