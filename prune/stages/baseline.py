"""The baseline stage: accuracy of the dense model (shared by every pruning of it)."""

from __future__ import annotations

from pathlib import Path

from .. import dist
from ..io import write_json
from .context import RunContext

NAME = "baseline"
DISTRIBUTED = True


def inputs(ctx: RunContext) -> dict:
    return ctx.eval_inputs()


def build(ctx: RunContext, out: Path) -> dict:
    dense, data_cfg, _ = ctx.model()
    info = {"dense": ctx.accuracy(dense, data_cfg, "dense")}
    if dist.is_main():
        write_json(out / "metrics.json", info)
    return info
