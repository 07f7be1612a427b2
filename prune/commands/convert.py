"""`prune convert`: a timm model (hub weights or a safetensors checkpoint) as a model directory."""

from __future__ import annotations

import json

from .options import usage


def run(args) -> int:
    import shutil
    from pathlib import Path

    out = Path(args.out)
    args.writes = out.parent
    if out.exists():
        raise usage(f"--out {out} exists; give a new directory")
    try:
        kwargs = json.loads(args.kwargs)
        assert isinstance(kwargs, dict)
    except (ValueError, AssertionError):
        raise usage(f"--kwargs must be a JSON object of timm.create_model arguments, not {args.kwargs!r}") from None
    if args.pretrained and args.checkpoint:
        raise usage("give --pretrained (timm hub weights) or --checkpoint (a safetensors file), not both")
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is not None:
        if not (ckpt.exists() or ckpt.is_symlink()):
            raise usage(f"--checkpoint {ckpt} does not exist")
        if ckpt.suffix != ".safetensors":
            raise usage(f"--checkpoint {ckpt}: give a safetensors file; prune never unpickles .pth/.bin files "
                         "(save one with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'))")
    stats = {}
    for key in ("mean", "std"):
        v = getattr(args, key)
        if v is not None:
            try:
                stats[key] = [float(x) for x in v.split(",")]
                assert len(stats[key]) == 3
            except (ValueError, AssertionError):
                raise usage(f"--{key} must be three numbers separated by commas, not {v!r}") from None
    import timm
    from timm.data import resolve_data_config

    from ..checkpoint import load_weights, write_model_dir
    from ..models import ViTAdapter, _create

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
