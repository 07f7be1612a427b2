"""The evaluate stage: accuracy of the pruned model before any recovery."""

from __future__ import annotations

from pathlib import Path

from .. import dist
from ..artifacts import cut_stage
from ..checkpoint import load_pruned
from ..io import write_json
from .context import RunContext

NAME = "evaluate"
DISTRIBUTED = True


def inputs(ctx: RunContext) -> dict:
    return {**ctx.eval_inputs(), "reads": [cut_stage(ctx.r)]}


def build(ctx: RunContext, out: Path) -> dict:
    _, data_cfg, _ = ctx.model()
    pruned, _ = load_pruned(ctx.run_dir.path(cut_stage(ctx.r)))
    info = {"pruned": ctx.accuracy(pruned, data_cfg, "pruned")}
    if dist.is_main():
        write_json(out / "metrics.json", info)
    return info
