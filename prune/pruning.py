"""Structural pruning (surgery) with Torch-Pruning, and mean compensation. Saving and loading the
result is `prune.checkpoint`'s.

Units are removed through their kind's Torch-Pruning group (`Unit.group`): every group is rooted
at the unit's own layer, so nothing outside the units' layers changes shape.
"""

from __future__ import annotations

import torch
from torch import nn

from .budget.allocate import BudgetSettings, kept_counts, kept_indices
from .errors import ConfigError
from .units import FFN, Unit, dependency_graph


def prune_units(model: nn.Module, unit: Unit, table: torch.Tensor, settings: BudgetSettings,
                example_inputs: torch.Tensor, act_mean: torch.Tensor | None = None,
                keep: list[int] | None = None, compensate: str = "none") -> list[list[int]]:
    """Remove the lowest-scoring units of one kind from `model` in place; return the kept indices per block.

    table: `[L, width]` scores (higher = keep). settings: the budget (the recipe's `PruneCfg`, or anything
    with its budget fields). keep: units each block keeps (default: `kept_counts` of the table under
    `settings`; the prune stage and iterative scoring fix them themselves). compensate: surgery's own
    option, "mean" folds the removed units' mean output into the next layer's bias; act_mean: `[L, width]`
    mean unit output over calibration tokens, which it needs (`Unit.compensate`: exact for a unit whose
    output is constant).
    """
    if not 0 < settings.ratio < 1:
        raise ConfigError(f"prune.ratio must be in (0, 1), not {settings.ratio}")
    if compensate not in ("none", "mean"):
        raise ConfigError(f"prune.compensate must be 'none' or 'mean', not {compensate!r}")
    if compensate == "mean" and act_mean is None:
        raise ConfigError("compensate='mean' needs the calibration activation means")
    widths = unit.widths(model)
    graph = dependency_graph(model, example_inputs)
    kept_idx, emptied = [], []
    for l, k in enumerate(keep if keep is not None else kept_counts(table, widths, settings)):
        everything = list(range(widths[l]))
        kept_idx.append(kept_indices(table[l, :widths[l]].double(), k) if k else [])
        removed = sorted(set(everything) - set(kept_idx[-1]))
        if not removed:
            continue
        if compensate == "mean":
            unit.compensate(model, l, removed, act_mean[l])
        if k == 0:  # the branch becomes its bias, after every Torch-Pruning group (they share one graph)
            emptied.append(l)
            continue
        group = unit.group(graph, model, l, removed)
        if not graph.check_pruning_group(group):
            raise ConfigError(f"block {l}: Torch-Pruning refused to remove {len(removed)} of {widths[l]} {unit.kind} units")
        group.prune()
        unit.after_prune(model, l, k)
    for l in emptied:
        unit.empty(model, l)
    return kept_idx


def prune_ffn(model: nn.Module, table: torch.Tensor, settings: BudgetSettings, example_inputs: torch.Tensor,
              act_mean: torch.Tensor | None = None, keep: list[int] | None = None,
              compensate: str = "none") -> list[list[int]]:
    """`prune_units` for FFN neurons."""
    return prune_units(model, FFN, table, settings, example_inputs, act_mean, keep, compensate)
