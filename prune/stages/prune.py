"""The prune stage: cut the lowest-scoring units with Torch-Pruning and save the pruned model."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..budget import PruneSettings
from ..io import write_json
from ..pruning import count_params_macs, prune_units, save_pruned
from ..units import FFN
from . import importance

NAME = "prune"
DISTRIBUTED = False


def inputs(ctx) -> dict:
    return {**ctx.model_inputs(), "prune": ctx.r.prune.model_dump(), "reads": [importance.NAME]}


def build(ctx, out: Path) -> dict:
    p = ctx.r.prune
    model, data_cfg, spec = ctx.model()
    imp = load_file(ctx.run_dir.path(importance.NAME) / importance.FILE)
    example = torch.randn(1, *data_cfg.input_size)
    params0, macs0 = count_params_macs(model, example)
    settings = PruneSettings(ratio=p.ratio, scope=p.scope, max_layer_ratio=p.max_layer_ratio,
                             round_to=p.round_to, compensate=p.compensate)
    dense_widths, kept = {}, {}
    for unit in ctx.units:
        k = unit.kind
        dense_widths[k] = unit.widths(model)
        keep = imp[f"{k}.keep"].tolist() if f"{k}.keep" in imp else None  # the importance stage fixed the widths
        kept[k] = prune_units(model, unit, imp[f"{k}.scores"], settings, example, act_mean=imp[f"{k}.act_mean"],
                              keep=keep)
    params1, macs1 = count_params_macs(model, example)
    save_pruned(model, out, spec, kept, dense_widths, data_cfg.as_dict(), ctx.classes())
    ffn = FFN.kind  # prune.json and the summary still describe FFN widths
    info = {"params_dense": params0, "params_pruned": params1, "macs_dense": macs0, "macs_pruned": macs1,
            "dense_widths": dense_widths[ffn], "widths": [len(k) for k in kept[ffn]],
            "ffn_neurons_removed": 1 - sum(len(k) for k in kept[ffn]) / sum(dense_widths[ffn])}
    write_json(out / "prune.json", info)
    return info
