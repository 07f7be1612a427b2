"""The `prune` command: argument parsing and dispatch to `prune/commands/<subcommand>.py`. User errors
print one line and exit non-zero; nothing is half-written."""

from __future__ import annotations

import argparse
import contextlib
import sys

from .commands import bench, convert, export, paths, plan, recipe, recipes, specialize
from .commands.options import choices, field_range, schema_field
from .errors import PruneError

COMMANDS = {"paths": paths.run, "recipes": recipes.run, "bench": bench.run, "specialize": specialize.run,
            "export": export.run, "convert": convert.run, "plan": plan.run}

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
    p.add_argument("--method", default="jas", choices=choices("paths", "method"),
                   help="jas (default) = the paper's layer-progressive joint attribution; the others are its baselines")
    p.add_argument("--steps", type=int, default=20, help="integrated-gradient steps m (default: 20)")
    p.add_argument("--top-k", type=int, default=1, help="neurons per layer on each path (default: 1, the paper's)")
    p.add_argument("--scope", default="auto", choices=choices("paths", "scope"),
                   help="neurons read at the CLS token (cls, the paper's) or as channels over all tokens (tokens); "
                        "auto (default) = cls when the model reads its CLS token")
    p.add_argument("--target", default="label", choices=choices("paths", "target"),
                   help="attribute the probability of the true label (default) or of the prediction")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows (images x steps) per chunk; bounds peak memory (default: 4 images per chunk)")
    p.add_argument("--seed", type=int, default=0, help="image sampling and random-path seed (default: 0)")
    p.add_argument("--no-candidates", dest="keep_candidates", action="store_false",
                   help="do not keep the dense [L, D] per-image scores (saves memory on large runs)")
    p.add_argument("--out", required=True, help="output directory (required)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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
                    "  prune specialize runs/cifar10 --classes cat,dog --set prune.macs_ratio=0.6",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("run", help="a finished run directory (made by prune --recipe)")
    sp.add_argument("--classes", required=True,
                    help="comma-separated class indices or names (the dataset's ClassLabel names), in output order")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value of the run's recipe, e.g. --set prune.macs_ratio=0.6 (repeatable)")
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
                    help=f"ONNX opset, {field_range(schema_field('export', 'opset')[1])} (default: 18)")
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
            return recipe.run(args)
        return COMMANDS[args.command](args)
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
