"""`prune_vit`: prune's own timm architecture, so a pruned-model directory loads with timm alone once
`prune` is imported (`prune/__init__.py` registers it when timm is imported):

    import prune, timm
    model = timm.create_model("local-dir:runs/quickstart/finetune", pretrained=True)

A pruned ViT's blocks differ in head count and FFN width, which no stock timm architecture describes.
`prune_vit`'s `model_args` are the base architecture (`base_architecture`, a timm name such as
`vit_tiny_patch16_224`) with its own kwargs (`img_size`, `num_classes`, ...), and the kept width of every
block per unit kind (`block_heads`, `block_mlp`; 0: the branch is its bias, `ConstantBranch`). The base
model is built dense and every block resized by the unit kinds' own `resize`, the code `load_pruned`
uses, so both build the same modules and the state dict in `model.safetensors` fits either.

`timm_config` writes the `config.json` timm's `local-dir:` loader reads (timm/models/_hub.py
`load_model_config_from_path`): `architecture`, `num_classes`, `model_args` and `pretrained_cfg` (every key
a field of timm's `PretrainedCfg`: input size, mean, std, interpolation, crop, class names as
`label_names`), so `timm.data.resolve_data_config(model=model)` gives the preprocessing prune evaluated with.
"""

from __future__ import annotations

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

ARCHITECTURE = "prune_vit"
BASE = "base_architecture"
WIDTH_ARGS = {"heads": "block_heads", "ffn": "block_mlp"}  # unit kind -> its model_args key

default_cfgs = generate_default_cfgs({ARCHITECTURE: {
    "url": "", "num_classes": None, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 1.0,
    "interpolation": "bicubic", "fixed_input_size": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    "first_conv": "patch_embed.proj", "classifier": "head"}})


def build(base_architecture: str | None = None, block_heads: list[int] | None = None,
          block_mlp: list[int] | None = None, **kwargs) -> nn.Module:
    """The base architecture built dense from `kwargs` (random weights), then every block resized to the
    given head counts and FFN widths."""
    if not isinstance(base_architecture, str) or base_architecture.split(".")[0] == ARCHITECTURE:
        raise ValueError(f"{ARCHITECTURE} needs model_args.{BASE}, the timm architecture it was pruned from "
                         f"(not {base_architecture!r})")
    # imported here, not at the top: this module is imported the moment timm finishes importing, which
    # may happen while prune.units itself is being imported (Torch-Pruning imports timm)
    from .units import FFN, HEADS

    model = timm.create_model(base_architecture, pretrained=False, **kwargs)
    for unit, widths in ((HEADS, block_heads), (FFN, block_mlp)):
        if widths is None:
            continue
        if len(widths) != len(model.blocks) or not all(isinstance(w, int) and w >= 0 for w in widths):
            raise ValueError(f"{WIDTH_ARGS[unit.kind]} must be {len(model.blocks)} non-negative integers "
                             f"(one per block), not {widths!r}")
        unit.resize(model, list(widths))
    return model


@register_model
def prune_vit(pretrained: bool = False, **kwargs) -> nn.Module:
    """A ViT pruned by `prune`: `base_architecture` with per-block `block_heads` / `block_mlp` widths."""
    return build_model_with_cfg(build, ARCHITECTURE, pretrained, **kwargs)


def model_args(architecture: str, model_kwargs: dict, widths: dict[str, list[int]]) -> dict:
    """`prune_vit`'s model_args for a model built as `architecture(**model_kwargs)` and resized to `widths`
    (per unit kind). A base that is itself a `prune_vit` (a pruned model pruned again) is flattened: its
    base, and its widths of the kinds not pruned this time."""
    args = dict(model_kwargs)
    base = args.pop(BASE) if architecture == ARCHITECTURE else architecture
    args = {BASE: base, **args}
    for kind, w in widths.items():
        args[WIDTH_ARGS[kind]] = [int(v) for v in w]
    return args


def timm_config(args: dict, data_config: dict, num_classes: int, num_features: int,
                label_names: list[str] | None = None, license: str | None = None, extra: dict | None = None) -> dict:
    """The `config.json` timm's `local-dir:` loader reads for a `prune_vit` with `model_args` `args`."""
    cfg = {"input_size": list(data_config["input_size"]), "interpolation": data_config.get("interpolation", "bicubic"),
           "mean": list(data_config["mean"]), "std": list(data_config["std"]),
           "crop_pct": float(data_config.get("crop_pct", 1.0)), "crop_mode": "center",
           "fixed_input_size": not args.get("dynamic_img_size", False), "num_classes": int(num_classes),
           "first_conv": "patch_embed.proj", "classifier": "head"}
    if label_names is not None:
        cfg["label_names"] = list(label_names)
    if license:
        cfg["license"] = license
    out = {"architecture": ARCHITECTURE, "num_classes": int(num_classes), "num_features": int(num_features),
           "model_args": args, "pretrained_cfg": cfg}
    if extra:
        out.update(extra)
    return out
