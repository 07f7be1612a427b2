"""The criterion protocol, what criteria may read, and Torch-Pruning importances evaluated per block."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from ..paths import PathStats
from ..units import Unit, dependency_graph, stack_rows


@dataclass
class ImportanceContext:
    """What criteria may use: the model, path stats, calibration batches, activation statistics."""

    model: nn.Module
    stats: PathStats | None = None
    calibration: Callable[[], object] | None = None  # returns an iterable of (images, labels, ...) batches
    act_stats: dict[str, dict] | None = None  # unit kind -> `gates.activation_stats`: mean, abs_mean, var
    example_inputs: torch.Tensor | None = None
    seed: int = 0
    path_images: Callable[[], object] | None = None  # class-balanced (images, labels, ...) batches of the paths
    steps: int = 20  # integrated-gradient steps m
    objective: str = "logprob"  # what attributions explain: log p(label) or p(label)
    rows: int | None = None  # rows (images x steps) per forward, bounds memory
    progress: bool = False
    reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)  # sum over processes
    _graph: object = None

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def graph(self) -> tp.DependencyGraph:
        """Torch-Pruning's dependency graph of the model (built once)."""
        if self._graph is None:
            self._graph = dependency_graph(self.model, self.example_inputs)
        return self._graph


class Criterion(ABC):
    """A scoring rule for units: `scores(ctx, unit)` gives the whole `[L, width]` table (higher = keep).
    `BlockCriterion`s (`progressive = True`) also score one block at a time (`score_block(ctx, unit, l)`,
    `[width]`) on a model whose earlier blocks are pruned (masked), which `prune.mode: progressive`
    needs. `kinds` says which unit kinds it can score at all, `scale` which comparisons its values
    support (`criteria.scorers` hands the rest to a budget criterion). Options go to the constructor;
    the registry holds configured instances."""

    name: str = ""
    kinds: frozenset[str] | None = None  # the unit kinds it can score (None: every kind)
    # what its values compare across: "nats" of the objective (blocks and unit kinds: one budget may rank heads
    # against neurons), "relative" (blocks of one kind: normalised magnitudes), "rank" (units within a block only)
    scale: str = "relative"
    needs_paths: bool = False  # reads the paths stage (per-class path statistics)
    uses_path_images: bool = False  # scores the paths' class-balanced images itself (paths.* settings)
    progressive: bool = False
    formula: str = ""

    def can_score(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    @abstractmethod
    def scores(self, ctx: ImportanceContext, unit: Unit) -> torch.Tensor:  # [L, width]
        ...

    def tables(self, ctx: ImportanceContext, units: list[Unit]) -> dict[str, torch.Tensor]:
        """`scores` of every kind in `units` (a criterion that can score all kinds in one pass overrides this)."""
        return {u.kind: self.scores(ctx, u) for u in units}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class BlockCriterion(Criterion):
    """A criterion that scores one block at a time on a partly pruned (masked) model: what the progressive
    and iterative schedules need. Its whole table is its blocks' rows, unless it overrides `scores`."""

    progressive = True

    @abstractmethod
    def score_block(self, ctx: ImportanceContext, unit: Unit, block: int) -> torch.Tensor:  # [width]
        ...

    def scores(self, ctx: ImportanceContext, unit: Unit) -> torch.Tensor:  # [L, width]
        blocks = tqdm(range(len(unit.widths(ctx.model))), desc=self.name, unit="block", disable=not ctx.progress)
        return stack_rows([self.score_block(ctx, unit, l) for l in blocks])


def tp_table(ctx: ImportanceContext, unit: Unit, importance: tp.importance.Importance,
             blocks: list[int] | None = None) -> torch.Tensor:
    """Evaluate a Torch-Pruning importance on each block's whole group of units -> `[len(blocks), width]`."""
    dg = ctx.graph()
    widths = unit.widths(ctx.model)
    rows = []
    for l in range(len(widths)) if blocks is None else blocks:
        group = unit.group(dg, ctx.model, l, list(range(widths[l])))
        rows.append(unit.per_unit(ctx.model, l, importance(group).detach().cpu().double()))
    return stack_rows(rows)
