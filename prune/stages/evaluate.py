"""The evaluate stage: accuracy of the pruned model before any recovery."""

from __future__ import annotations

from pathlib import Path

from .. import dist
from ..io import write_json
from ..checkpoint import load_pruned
from . import prune

NAME = "evaluate"
DISTRIBUTED = True


def inputs(ctx) -> dict:
    return {**ctx.eval_inputs(), "reads": [prune.NAME]}


def build(ctx, out: Path) -> dict:
    _, data_cfg, _ = ctx.model()
    pruned, _ = load_pruned(ctx.run_dir.path(prune.NAME))
    info = {"pruned": ctx.accuracy(pruned, data_cfg, "pruned")}
    if dist.is_main():
        write_json(out / "metrics.json", info)
    return info
