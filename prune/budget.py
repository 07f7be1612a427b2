"""Budgets: how many units each block keeps, and which ones.

`kept_counts` turns a score table into per-block widths (uniform, or one ranking across blocks with a
per-block cap); `kept_indices` picks a block's survivors. Progressive scoring masks with the same
rule the prune stage cuts with, so both always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass
class PruneSettings:
    ratio: float = 0.5  # fraction of units removed
    scope: str = "uniform"  # "uniform": the same ratio in every block; "global": one ranking across blocks
    max_layer_ratio: float = 0.9  # global: no block loses more than this fraction
    round_to: int | None = None  # kept widths are multiples of this
    compensate: str = "none"  # "mean": fold removed units' mean output into the next layer's bias


def kept_counts(table: torch.Tensor, widths: list[int], settings: PruneSettings) -> list[int]:
    """How many units each block keeps.

    uniform: round(D * (1 - ratio)) per block. global: the lowest-scoring units across all blocks
    go first until `ratio` of all units are gone, but no block loses more than `max_layer_ratio`
    (Torch-Pruning's one-shot global mode does not enforce that cap, so the allocation is done
    here and the removal by its dependency graph). `round_to` rounds each kept width up.
    """
    if settings.scope == "uniform":
        kept = [max(1, round(w * (1 - settings.ratio))) for w in widths]
    elif settings.scope == "global":
        floor = [max(1, math.ceil(w * (1 - settings.max_layer_ratio) - 1e-9)) for w in widths]
        to_remove = round(sum(widths) * settings.ratio)
        if to_remove > sum(widths) - sum(floor):
            raise ConfigError(f"prune.ratio {settings.ratio} is unreachable with prune.max_layer_ratio "
                              f"{settings.max_layer_ratio}: raise max_layer_ratio to at least the ratio")
        kept = list(widths)
        order = torch.cat([table[l, :w].double() for l, w in enumerate(widths)]).argsort(stable=True)
        layer_of = torch.cat([torch.full((w,), l) for l, w in enumerate(widths)])
        for i in order.tolist():
            if to_remove == 0:
                break
            l = int(layer_of[i])
            if kept[l] > floor[l]:
                kept[l] -= 1
                to_remove -= 1
    else:
        raise ConfigError(f"prune.scope must be 'uniform' or 'global', not {settings.scope!r}")
    if settings.round_to:
        r = settings.round_to
        kept = [min(w, math.ceil(k / r) * r) for k, w in zip(kept, widths)]
    return kept


def kept_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """The `keep` highest-scoring entries of one block's scores, ascending; ties go to the higher index
    (stable ascending sort, the last `keep` survive). Progressive scoring masks with the same rule."""
    order = scores.double().argsort(stable=True)
    return sorted(order[len(order) - keep:].tolist())


def keep_mask(row: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask of the units the prune stage will keep (`kept_indices`, the same rule)."""
    mask = torch.zeros(len(row))
    mask[kept_indices(row, keep)] = 1.0
    return mask
