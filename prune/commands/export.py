"""`prune export`: the ONNX file of a run's final model or a pruned-model directory, parity-checked,
and its int8 versions quantised and judged (`quantize.quantize_and_judge`, as the export stage does)."""

from __future__ import annotations

import sys

from ..errors import PruneError
from .options import check_options, choices_of_list, usage


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from ..checkpoint import is_pruned_dir, load_pruned
    from ..export import export_checked

    target = Path(args.target)
    check_options(args, "export", "opset", "atol", "max_int8_drop")
    check_options(args, "data", "eval_images", flags={"eval_images": "--images"}, values={"eval_images": args.images})
    modes = [m.strip() for m in args.quantize.split(",") if m.strip()]
    try:
        check_options(args, "export", "quantize", values={"quantize": modes})
    except PruneError:
        raise usage(f"--quantize {args.quantize}: give {' or '.join(choices_of_list('export', 'quantize'))}, "
                     "or both separated by a comma (the same modes as recipe key export.quantize)") from None
    run = (target / "recipe.yaml").is_file()
    if run:
        from ..artifacts import final_model_dir

        model_dir = final_model_dir(target)
    elif is_pruned_dir(target):
        model_dir = target
    else:
        raise usage(f"{target} is neither a run directory (recipe.yaml) nor a pruned-model directory "
                     "(structure.json); give the --out of a prune --recipe run or one of its prune/finetune directories")
    out = Path(args.out) if args.out else Path(f"{target.resolve().name}.onnx")
    if out.suffix != ".onnx":
        raise usage(f"--out {out}: give a file name ending in .onnx")
    if out.is_dir():
        raise usage(f"--out {out} is a directory; give a file name ending in .onnx")
    if "static" in modes and not run and args.data is None:
        raise usage("--quantize static calibrates on training images: give --data (a dataset with train and test "
                     "splits), or export from a run directory")
    model, structure = load_pruned(model_dir)
    size = structure["data_config"].get("input_size") or [3, *model.patch_embed.img_size]
    images = _run_images(target, structure) if run else None
    if images is None:
        images = torch.randn(8, *size, generator=torch.Generator().manual_seed(0))
    classes = structure.get("classes")
    args.writes = out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..export import deploy_metadata

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
    from ..quantize import onnx_predictions

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
    from ..quantize import quantize_and_judge

    q, meta = quantize_and_judge(fp32, mode, calibration, batches, reference, args.max_int8_drop)
    if reference is None:
        print(f"wrote {q} ({meta['bytes']:,} bytes, {meta['format']}); not judged: no evaluation images "
              "(give --data, or export from a run directory)")
        return False
    j = meta["int8"]
    print(f"wrote {q} ({meta['bytes']:,} bytes, {meta['format']}): top1 {j['top1']:.4f} vs fp32 {j['fp32_top1']:.4f} "
          f"on {j['images']} evaluation images, agreement {j['agreement']:.4f}")
    if not j["within_threshold"]:
        print(f"prune: error: {q.name} loses {j['drop'] * 100:.2f} points top-1 against {fp32.name} (more than "
              f"--max-int8-drop {args.max_int8_drop}): not recommended for deployment", file=sys.stderr)
    return not j["within_threshold"]


def _split(run, data: str | None, which: str):
    """A run's train/eval split (`data.Split`: the dataset, its image and label columns, its name), or --data's
    train/test split; None when there is neither."""
    import yaml

    from ..data import open_split

    if run is not None:
        d = (yaml.safe_load((run / "recipe.yaml").read_text()) or {}).get("data", {})
        source, split = d["source"], d["train_split" if which == "train" else "eval_split"]
        columns = (d.get("image_column"), d.get("label_column"))
    elif data is not None:
        source, split, columns = data, "train" if which == "train" else "test", (None, None)
    else:
        return None
    return open_split(source, split, *columns)


def _split_data(run, data: str | None, which: str, structure, n: int, sample: bool = True):
    """`n` prepared images and labels of `_split` (a seeded sample, or the first `n` rows)."""
    import random

    from ..data import stack_rows
    from ..models import DataConfig

    found = _split(run, data, which)
    if found is None:
        return None
    cfg = structure["data_config"]
    data_cfg = DataConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"],
                          cfg["crop_pct"])
    k = min(n, len(found.ds))
    rows = sorted(random.Random(0).sample(range(len(found.ds)), k)) if sample else list(range(k))
    return stack_rows(found, data_cfg, rows)


def _class_names(run, data: str | None) -> list[str] | None:
    """Class names of a run's dataset (or of --data), from its label feature; None when unknown."""
    from ..classes import class_names
    from ..errors import PruneError

    try:
        found = _split(run, data, "train")
        return None if found is None else class_names(found.ds, found.label_column)
    except (PruneError, KeyError, OSError):
        return None


def _run_images(run, structure):
    """The first 8 images of the run's evaluation split, prepared as the model expects (None if unavailable)."""
    from ..errors import PruneError

    try:
        return _split_data(run, None, "eval", structure, 8, sample=False)[0]
    except (PruneError, KeyError, OSError):
        return None
