"""Allocation: how many units each block keeps, and which ones.

`kept_counts` turns one kind's score table into per-block widths (uniform, or one ranking across
blocks with a per-block cap); `allocate_macs` ranks every unit of every kind by score per MAC and
removes the cheapest-to-lose until a share of the dense model's MACs is gone; `allocate_latency` does
the same against a cost whose saving depends on the width (`costs.CostModel`, e.g. measured
milliseconds); caps and floors (`removable`) bound every block; `kept_indices` picks a block's survivors. Progressive scoring masks with the same rule the prune stage cuts with, so both
always agree.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import torch

from ..defaults import MAX_LAYER_RATIO, MIN_LAYER_RATIO
from ..errors import ConfigError
from .costs import CostModel, LatencyCost


class BudgetSettings(Protocol):
    """What the budget reads of the recipe's `PruneCfg` (`prune.recipe`), which is passed as is: the targets,
    the scope, the caps and floors per kind and the rounding. Surgery options (`compensate`) are not the
    budget's: they go to `pruning.prune_units` on their own."""

    ratio: float  # fraction of units removed
    scope: str  # "uniform": the same ratio in every block; "global": one ranking across blocks
    max_layer_ratio: float | dict[str, float]  # global: no block loses more than this fraction (per kind)
    min_layer_ratio: float | dict[str, float]  # macs_ratio: every block loses at least this fraction (per kind)
    round_to: int | dict[str, int] | None  # kept widths are multiples of this (per kind)
    macs_ratio: float | None  # share of the dense model's MACs to remove, across all kinds (replaces ratio)
    latency_ratio: float | None  # share of the dense model's predicted latency to remove (`latency.py`)


def layer_cap(settings: BudgetSettings, kind: str) -> float:
    """The most of a block's units of `kind` that may go (`max_layer_ratio`)."""
    return per_kind(settings.max_layer_ratio, kind, MAX_LAYER_RATIO)


def layer_floor(settings: BudgetSettings, kind: str) -> float:
    """The least of a block's units of `kind` that must go (`min_layer_ratio`)."""
    return per_kind(settings.min_layer_ratio, kind, MIN_LAYER_RATIO)


def per_kind(value: float | dict[str, float], kind: str, default: float) -> float:
    """A setting given once for every kind, or per kind (`{ffn: 0.9, heads: 1.0}`; a kind not named: default)."""
    return float(value.get(kind, default)) if isinstance(value, dict) else float(value)


def removable(width: int, cap: float, floor: float) -> tuple[int, int]:
    """(least, most) units a block of `width` may lose under a floor and a cap on the fraction removed."""
    return min(width, math.ceil(width * floor - 1e-9)), max(0, min(width, math.floor(width * cap + 1e-9)))


def max_removable_macs(widths: dict[str, list[int]], costs: dict[str, list[int]], settings: BudgetSettings) -> int:
    """The most MACs the caps let `allocate_macs` remove (for checking a target before any work)."""
    return sum(removable(w, layer_cap(settings, k), layer_floor(settings, k))[1] * c
               for k in widths for w, c in zip(widths[k], costs[k]))


def allocate_macs(tables: dict[str, torch.Tensor], widths: dict[str, list[int]], costs: dict[str, list[int]],
                  target: int, settings: BudgetSettings, dense_macs: int | None = None) -> dict[str, list[int]]:
    """Units each block keeps, per kind, so that at least `target` MACs are removed.

    Every block first loses its floor (`min_layer_ratio`, its lowest-scoring units); then all remaining
    units of all kinds are ranked by |score| / cost (nats per MAC: what a unit's removal costs the
    objective per MAC it saves) and removed from the lowest until the target is met, no block losing
    more than its cap (`max_layer_ratio`). A cap of 1 lets a block lose every unit of a kind (the
    branch becomes its bias). Within a block the order is its score order, the rule `kept_indices` cuts by.
    """
    if target > max_removable_macs(widths, costs, settings):
        raise ConfigError(unreachable_macs(settings, widths, costs, target, dense_macs))
    removed_macs = 0
    kept = {k: list(w) for k, w in widths.items()}
    entries = []  # (score per MAC, kind, block) of every unit beyond the floors, in each block's score order
    for k in widths:
        for l, w in enumerate(widths[k]):
            lo, hi = removable(w, layer_cap(settings, k), layer_floor(settings, k))
            row = tables[k][l, :w].double()
            order = row.argsort(stable=True).tolist()  # ascending: the first ones go first
            kept[k][l] -= lo
            removed_macs += lo * costs[k][l]
            cost = max(1, costs[k][l])
            entries += [(row[i].item() / cost, rank, k, l) for rank, i in enumerate(order[lo:hi], start=lo)]
    entries.sort(key=lambda e: (e[0], e[1]))
    for score, _, k, l in entries:
        if removed_macs >= target:
            break
        kept[k][l] -= 1
        removed_macs += costs[k][l]
    return {k: rounded(kept[k], widths[k], settings, k) for k in kept}


def allocate_latency(tables: dict[str, torch.Tensor], widths: dict[str, list[int]], latency, target_ms: float,
                     settings: BudgetSettings) -> dict[str, list[int]]:
    """Units each block keeps, per kind, so that the predicted latency (`latency.LatencyTable.predict`) is at
    most `target_ms`. `latency`: a `costs.LatencyCost`, or the measured table it adapts.

    Like `allocate_macs`, but a unit's cost is what removing it saves at its block's current width on the
    measured table (`CostModel.saving`; the step to width 0, where the branch becomes its bias, included),
    so units are ranked by score per millisecond and the ranking is updated as widths shrink. Floors and
    caps as there.
    """
    cost = latency if isinstance(latency, CostModel) else LatencyCost(latency)
    kept, least, orders = {k: list(w) for k, w in widths.items()}, {}, {}
    for k in widths:
        for l, w in enumerate(widths[k]):
            lo, hi = removable(w, layer_cap(settings, k), layer_floor(settings, k))
            row = tables[k][l, :w].double()
            orders[k, l] = (row.argsort(stable=True).tolist(), row)
            kept[k][l] = w - lo
            least[k, l] = w - hi
    floor_ms = cost.predict({k: [least[k, l] for l in range(len(widths[k]))] for k in widths})
    if floor_ms > target_ms + 1e-9:
        dense = cost.predict(widths)
        reach = 1 - floor_ms / dense
        raise ConfigError(f"prune.latency_ratio {settings.latency_ratio} is unreachable: the caps (prune.max_layer_ratio) "
                          f"leave at least {floor_ms:.3f} ms of the dense {dense:.3f} ms; lower prune.latency_ratio to "
                          f"{math.floor(reach * 1000) / 1000}, raise prune.max_layer_ratio (1.0 lets a block lose every "
                          "unit of a kind), or add a kind to prune.units")

    def step(k: str, l: int) -> float:
        return cost.saving(k, l, kept[k][l])

    heap = []

    def push(k: str, l: int) -> None:
        if kept[k][l] > least[k, l]:
            order, row = orders[k, l]
            unit = order[widths[k][l] - kept[k][l]]  # the lowest-scoring unit still there
            heapq.heappush(heap, (row[unit].item() / max(step(k, l), 1e-9), k, l))

    for k, l in orders:
        push(k, l)
    current = cost.predict(kept)
    while current > target_ms and heap:
        _, k, l = heapq.heappop(heap)
        current -= step(k, l)
        kept[k][l] -= 1
        push(k, l)
    return {k: rounded(kept[k], widths[k], settings, k) for k in kept}


def rounded(kept: list[int], widths: list[int], settings: BudgetSettings, kind: str) -> list[int]:
    """Kept widths rounded up to multiples of `round_to` (for this kind; an emptied block stays empty)."""
    r = settings.round_to.get(kind) if isinstance(settings.round_to, dict) else settings.round_to
    if not r:
        return list(kept)
    return [min(w, math.ceil(n / r) * r) for n, w in zip(kept, widths)]


def unreachable_macs(settings: BudgetSettings, widths, costs, target: int, dense_macs: int | None = None) -> str:
    """The one-line error for a MACs target the caps cannot reach, with the largest target they can."""
    total_units = sum(w * c for k in widths for w, c in zip(widths[k], costs[k]))
    most = max_removable_macs(widths, costs, settings)
    dense = dense_macs or target / (settings.macs_ratio or 1.0)
    reach = most / dense
    return (f"prune.macs_ratio {settings.macs_ratio} is unreachable: the units pruned ({', '.join(widths)}) hold "
            f"{total_units / dense:.3f} of the dense model's MACs and the caps (prune.max_layer_ratio) let "
            f"{reach:.3f} go; lower prune.macs_ratio to {math.floor(reach * 1000) / 1000}, raise "
            "prune.max_layer_ratio (1.0 lets a block lose every unit of a kind), or add a kind to prune.units")


def kept_counts(table: torch.Tensor, widths: list[int], settings: BudgetSettings, kind: str = "ffn") -> list[int]:
    """How many units each block keeps.

    uniform: round(D * (1 - ratio)) per block. global: the lowest-scoring units across all blocks
    go first until `ratio` of all units are gone, but no block loses more than `max_layer_ratio`
    (Torch-Pruning's one-shot global mode does not enforce that cap, so the allocation is done
    here and the removal by its dependency graph). `round_to` rounds each kept width up.
    """
    if settings.scope == "uniform":
        kept = [max(1, round(w * (1 - settings.ratio))) for w in widths]
    elif settings.scope == "global":
        floor = [max(1, math.ceil(w * (1 - layer_cap(settings, kind)) - 1e-9)) for w in widths]
        to_remove = round(sum(widths) * settings.ratio)
        if to_remove > sum(widths) - sum(floor):
            raise ConfigError(unreachable_ratio(settings, widths, kind))
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
    return rounded(kept, widths, settings, kind)


def unreachable_ratio(settings: BudgetSettings, widths: list[int], kind: str) -> str:
    """The one-line error for a ratio the per-block cap cannot reach, with the cap that would reach it."""
    floor = [max(1, math.ceil(w * (1 - layer_cap(settings, kind)) - 1e-9)) for w in widths]
    most = (sum(widths) - sum(floor)) / sum(widths)
    need = next((c / 1000 for c in range(1, 1000) if sum(widths) - sum(
        max(1, math.ceil(w * (1 - c / 1000) - 1e-9)) for w in widths) >= round(sum(widths) * settings.ratio)), None)
    fix = f"raise prune.max_layer_ratio to {need}" if need else "lower prune.ratio"
    return (f"prune.ratio {settings.ratio} is unreachable with prune.max_layer_ratio {layer_cap(settings, kind)}: every "
            f"block keeps at least one {kind} unit and at least {1 - layer_cap(settings, kind):.3g} of its units, so at most "
            f"{most:.4f} can go; {fix}, or lower prune.ratio to {math.floor(most * 1000) / 1000}")


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
