"""The prune stage: cut the lowest-scoring units with Torch-Pruning and save the pruned model."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..budget import block_plan, count_params_macs, plan_keep
from ..checkpoint import save_pruned
from ..io import write_json
from ..pruning import prune_units
from ..units import FFN
from . import importance
from .context import RunContext

NAME = "prune"
DISTRIBUTED = False


def inputs(ctx: RunContext) -> dict:
    inp = {**ctx.model_inputs(), "prune": ctx.r.prune.model_dump(), "reads": [importance.NAME]}
    if ctx.latency_table() is not None:  # a table measured again (another machine) may plan other widths
        inp["latency_table"] = ctx.latency_table().to_json()
    return inp


def planned_keep(ctx: RunContext, imp: dict, model, example: torch.Tensor) -> dict[str, list[int]]:
    """Units each block keeps, per kind: fixed by the importance stage, or planned here from its tables."""
    if all(f"{u.kind}.keep" in imp for u in ctx.units):  # the importance stage fixed the widths
        return {u.kind: imp[f"{u.kind}.keep"].tolist() for u in ctx.units}
    tables = {u.kind: imp[f"{u.kind}.scores"] for u in ctx.units}
    return plan_keep(model, ctx.units, tables, ctx.r.prune, example, ctx.latency_table())


def build(ctx: RunContext, out: Path) -> dict:
    p = ctx.r.prune
    model, data_cfg, spec = ctx.model()
    imp = load_file(ctx.run_dir.path(importance.NAME) / importance.FILE)
    example = torch.randn(1, *data_cfg.input_size)
    params0, macs0 = count_params_macs(model, example)
    tables = {u.kind: imp[f"{u.kind}.scores"] for u in ctx.units}
    keep = planned_keep(ctx, imp, model, example)
    plan = block_plan(model, ctx.units, keep, example, ctx.latency_table())
    dense_widths, kept = {}, {}
    for unit in ctx.units:
        k = unit.kind
        dense_widths[k] = unit.widths(model)
        kept[k] = prune_units(model, unit, tables[k], p, example, act_mean=imp[f"{k}.act_mean"], keep=keep[k],
                              compensate=p.compensate)
    params1, macs1 = count_params_macs(model, example)
    save_pruned(model, out, spec, kept, dense_widths, data_cfg.as_dict(), ctx.classes(), label_names=ctx.label_names(),
                card=ctx.model_card(NAME))
    units = {k: {"dense_widths": dense_widths[k], "widths": [len(i) for i in kept[k]],
                 "removed": 1 - sum(len(i) for i in kept[k]) / sum(dense_widths[k])} for k in kept}
    ffn = units.get(FFN.kind) or {"dense_widths": FFN.widths(model), "widths": FFN.widths(model), "removed": 0.0}
    info = {"params_dense": params0, "params_pruned": params1, "macs_dense": macs0, "macs_pruned": macs1,
            "macs_removed": 1 - macs1 / macs0, "units": units,
            "dense_widths": ffn["dense_widths"], "widths": ffn["widths"], "ffn_neurons_removed": ffn["removed"],
            "emptied_blocks": [l for l in range(len(model.blocks))
                               if all(units[k]["widths"][l] == 0 for k in units) and len(units) == 2]}
    info["plan"] = plan
    table = ctx.latency_table()
    if table is not None:  # what the budget was paid in, and what it predicts for the pruned model
        write_json(out / "latency_table.json", table.to_json())
        info["latency_predicted"] = {"dense_ms": table.dense_ms,
                                     "pruned_ms": table.predict({k: [len(i) for i in kept[k]] for k in kept}),
                                     **ctx.r.prune.latency.model_dump(),
                                     **({"warning": table.noise_warning()} if table.noisy else {})}
    write_json(out / "prune.json", info)
    return info
