"""The plan of a cut before any surgery: how many units each block keeps under the recipe's budget
(`plan_keep`, checked before any scoring by `check_budget`), and per block the heads and FFN neurons
kept, the MACs and the predicted latency (`block_plan`), with totals and the predicted speed-up.
`prune plan` prints it, the prune stage records it, and the report shows it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..units import FFN, HEADS, Unit
from .allocate import BudgetSettings, allocate_latency, allocate_macs, kept_counts
from .costs import LatencyCost, MacsCost, count_params_macs, tokens


def plan_keep(model: nn.Module, units: list[Unit], tables: dict[str, torch.Tensor], settings: BudgetSettings,
              example_inputs: torch.Tensor, latency=None) -> dict[str, list[int]]:
    """Units each block keeps, per kind: `kept_counts` of each kind's table (`prune.ratio`), or with
    `macs_ratio` one ranking of every kind by score per MAC (`MacsCost`, `allocate_macs`) until that share
    of the dense model's MACs (`count_params_macs`) is removed, or with `latency_ratio` by score per
    millisecond on the measured `latency` table (`LatencyCost`, `allocate_latency`)."""
    widths = {u.kind: u.widths(model) for u in units}
    if settings.latency_ratio is not None:
        if latency is None:
            raise ConfigError("prune.latency_ratio needs the measured latency table")
        cost = LatencyCost(latency)
        return allocate_latency(tables, widths, cost, cost.dense() * (1 - settings.latency_ratio), settings)
    if settings.macs_ratio is None:
        return {u.kind: kept_counts(tables[u.kind], widths[u.kind], settings, u.kind) for u in units}
    cost = MacsCost(model, units, example_inputs)
    dense = cost.dense()
    return allocate_macs(tables, widths, cost.per_unit, math.ceil(settings.macs_ratio * dense), settings, dense)


def check_budget(model: nn.Module, units: list[Unit], settings: BudgetSettings, example_inputs: torch.Tensor,
                 latency=None) -> None:
    """Raise the one-line `ConfigError` `plan_keep` would raise, before any scoring: whether the target is
    reachable under the caps does not depend on the scores, so a table of zeros answers it."""
    zeros = {u.kind: torch.zeros(len(u.widths(model)), max(u.widths(model))) for u in units}
    plan_keep(model, units, zeros, settings, example_inputs, latency)


def block_plan(model: nn.Module, units: list[Unit], keep: dict[str, list[int]], example_inputs: torch.Tensor,
               latency=None) -> dict:
    """`{"blocks": [...], "macs_dense", "macs_planned", "ms_dense", "ms_planned", "speedup"}` for the dense
    `model` cut to `keep` (units per block, per kind; kinds not pruned stay dense). MACs per unit are the
    units' own costs (`Unit.cost`), so the total equals what `count_params_macs` counts after the cut."""
    _, dense_macs = count_params_macs(model, example_inputs)
    t = tokens(model)
    widths = {u.kind: u.widths(model) for u in (FFN, HEADS)}
    kept = {k: keep.get(k, w) for k, w in widths.items()}
    costs = {u.kind: u.cost(model, t) for u in (FFN, HEADS)}
    removed = [sum((widths[k][l] - kept[k][l]) * costs[k][l] for k in widths) for l in range(len(model.blocks))]
    blocks = []
    for l in range(len(model.blocks)):
        row = {"block": l, "heads": kept[HEADS.kind][l], "heads_dense": widths[HEADS.kind][l],
               "ffn": kept[FFN.kind][l], "ffn_dense": widths[FFN.kind][l],
               "macs_removed": int(removed[l])}
        if latency is not None:
            row["ms"] = latency.attn(kept[HEADS.kind][l]) + latency.ffn(kept[FFN.kind][l])
            row["ms_dense"] = latency.attn(widths[HEADS.kind][l]) + latency.ffn(widths[FFN.kind][l])
        blocks.append(row)
    out = {"blocks": blocks, "macs_dense": int(dense_macs), "macs_planned": int(dense_macs - sum(removed))}
    if latency is not None:
        out["ms_dense"] = latency.dense_ms
        out["ms_planned"] = latency.predict(kept)
        out["speedup"] = latency.dense_ms / out["ms_planned"]
        if latency.noisy:
            out["latency_warning"] = latency.noise_warning()
    return out


def render(plan: dict) -> list[str]:
    """The plan as text lines (a table per block, then the totals)."""
    ms = "ms_dense" in plan
    lines = [f"{'block':>5} {'heads':>9} {'FFN neurons':>13} {'MACs removed':>14}" + (f" {'branch ms':>10}" if ms else "")]
    for b in plan["blocks"]:
        lines.append(f"{b['block']:>5} {b['heads']:>4}/{b['heads_dense']:<4} {b['ffn']:>6}/{b['ffn_dense']:<6} "
                     f"{b['macs_removed']:>14,}" + (f" {b['ms']:>10.3f}" if ms else ""))
    lines.append(f"MACs: {plan['macs_planned']:,} of {plan['macs_dense']:,} "
                 f"({plan['macs_planned'] / plan['macs_dense']:.3f}, {plan['macs_dense'] / plan['macs_planned']:.2f}x)")
    if ms:
        lines.append(f"predicted latency: {plan['ms_planned']:.3f} ms of {plan['ms_dense']:.3f} ms measured dense "
                     f"({plan['speedup']:.2f}x)")
    if plan.get("latency_warning"):
        lines.append(f"warning: {plan['latency_warning']}")
    return lines
