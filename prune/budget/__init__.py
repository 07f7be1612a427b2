"""Budgets: what a unit costs (`costs`: `CostModel`, `MacsCost`, `LatencyCost`, the MAC counter), how many
units each block keeps under a ratio or a cost target with caps and floors (`allocate`), and the plan of a
cut before surgery (`plan`: `plan_keep`, `check_budget`, `block_plan`). A new currency is a `CostModel`;
a new target is a function in `allocate` and a branch in `plan_keep`."""

from .allocate import (BudgetSettings, allocate_latency, allocate_macs, keep_mask, kept_counts, kept_indices,
                       layer_cap, layer_floor, max_removable_macs, per_kind, removable, rounded, unreachable_macs,
                       unreachable_ratio)
from .costs import CostModel, LatencyCost, MacsCost, count_params_macs, tokens
from .plan import block_plan, check_budget, plan_keep, render

__all__ = ["BudgetSettings", "CostModel", "LatencyCost", "MacsCost", "allocate_latency", "allocate_macs",
           "block_plan", "check_budget", "count_params_macs", "keep_mask", "kept_counts", "kept_indices",
           "layer_cap", "layer_floor",
           "max_removable_macs", "per_kind", "plan_keep", "removable", "render", "rounded", "tokens",
           "unreachable_macs", "unreachable_ratio"]
