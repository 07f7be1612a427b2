"""Attribution criteria: gradients of log p(label) at each unit's gate (`prune.gates`), class-balanced."""

from __future__ import annotations

from ..gates import attribution_rows, first_order_tables
from .base import BlockCriterion


class Attribution(BlockCriterion):
    """`integrated=True`: integrated gradients over `ctx.steps` steps of scaling all of a block's units,
    on the paths' class-balanced images. `integrated=False`: the first-order (alpha = 1) end of that
    integral, on the calibration images, every block and kind from one gated forward and backward per batch
    (`score_block`, for progressive scoring, runs one block's)."""

    scale = "nats"  # gradients of log p(label) (or p) times the unit's output: the objective's own units

    def __init__(self, name: str, integrated: bool, formula: str):
        self.name, self.integrated, self.formula = name, integrated, formula
        self.uses_path_images = integrated

    def score_block(self, ctx, unit, block):
        images = ctx.path_images if self.integrated else ctx.calibration
        return attribution_rows(ctx.model, unit, images, ctx.num_classes, steps=ctx.steps if self.integrated else None,
                                objective=ctx.objective, rows=ctx.rows, reduce=ctx.reduce)(block)

    def scores(self, ctx, unit):
        if self.integrated:  # block by block (BlockCriterion.scores)
            return super().scores(ctx, unit)
        return self.tables(ctx, [unit])[unit.kind]

    def tables(self, ctx, units):
        if self.integrated:
            return super().tables(ctx, units)
        return first_order_tables(ctx.model, units, ctx.calibration, ctx.num_classes, objective=ctx.objective,
                                  rows=ctx.rows, reduce=ctx.reduce)
