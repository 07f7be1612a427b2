"""Criteria that need no paths: Torch-Pruning's magnitude and Taylor importances on each block's
group of units, activation statistics, and the random floor."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..units import stack_rows
from .base import BlockCriterion, Criterion, tp_table


class Magnitude(Criterion):
    """Torch-Pruning's `GroupMagnitudeImportance(p)` with its per-group normalisation (`normalizer`)."""

    def __init__(self, name: str, p: int, normalizer: str | None = "mean"):
        self.name, self.p, self.normalizer = name, p, normalizer
        norm = "L1 norm" if p == 1 else "squared L2 norm"
        self.formula = (f"Torch-Pruning GroupMagnitudeImportance(p={p}): {norm} of fc1 row + fc2 column "
                        f"(group mean, normalizer={normalizer})")

    def scores(self, ctx, unit):
        return tp_table(ctx, unit, tp.importance.GroupMagnitudeImportance(p=self.p, normalizer=self.normalizer))


class Taylor(BlockCriterion):
    """Torch-Pruning's `GroupTaylorImportance` with the cross-entropy's weight gradients over the calibration batches."""

    name = "taylor"

    def __init__(self, normalizer: str | None = "mean"):
        self.normalizer = normalizer
        self.formula = ("Torch-Pruning GroupTaylorImportance: |weight x dLoss/dweight| of fc1 row + fc2 column, "
                        f"gradients of the cross-entropy summed over the calibration batches (normalizer={normalizer})")

    def scores(self, ctx, unit):
        return self._table(ctx, unit, None)

    def score_block(self, ctx, unit, block):
        return self._table(ctx, unit, [block])[0]

    def _table(self, ctx, unit, blocks):
        """Gradients of the summed cross-entropy for the given blocks' unit parameters only (backward
        stops there), then Torch-Pruning's Taylor importance of those blocks."""
        model = ctx.model
        ctx.graph()  # built before any gradient is computed
        wanted = [p for l in (range(len(unit.widths(model))) if blocks is None else blocks)
                  for p in unit.parameters(model, l)]
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in wanted:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad():
                for batch in ctx.calibration():
                    x, y = batch[0], batch[1]
                    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            for p in wanted:  # every process's calibration share
                p.grad = ctx.reduce(p.grad if p.grad is not None else torch.zeros_like(p))
            return tp_table(ctx, unit, tp.importance.GroupTaylorImportance(normalizer=self.normalizer), blocks)
        finally:
            model.zero_grad(set_to_none=True)
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)


class ActivationStatistic(Criterion):
    """One of `gates.activation_stats`' statistics of the unit's output over the calibration tokens."""

    def __init__(self, name: str, stat: str, formula: str):
        self.name, self.stat, self.formula = name, stat, formula

    def scores(self, ctx, unit):
        return ctx.act_stats[unit.kind][self.stat]


class Random(Criterion):
    name = "random"
    formula = "uniform random scores (seeded): the floor every criterion must beat"

    def scores(self, ctx, unit):
        g = torch.Generator().manual_seed(ctx.seed)
        return stack_rows([torch.rand(w, generator=g, dtype=torch.float64) for w in unit.widths(ctx.model)])
