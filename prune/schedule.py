"""Iterative pruning (`prune.mode: iterative`): reach the target in `prune.iterations` equal steps,
re-scoring the partly pruned (and, with `prune.reconstruct`, re-fitted) model between steps.

One-shot scores every unit of the dense model once, so it cannot see what removing several units
together does (first-order scores of single heads miss that emptying the attention of several
consecutive blocks costs more than the sum of its parts). Here step s plans the cut for s/N of the
target on the dense model's indices, where units already removed stay removed; the dense model is
cut to that plan, re-fitted when asked, and scored again, so every step ranks the survivors on the
model they will actually live in. The result is a score table per kind in the dense model's indexing
(survivors: their last scores; removed units: below every survivor, earlier removals lower) and the
kept widths, so the prune stage cuts exactly the units the last step removed.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .budget import kept_indices, plan_keep
from .pruning import prune_units
from .recipe import PruneCfg
from .units import Unit


def _dense_table(scores: torch.Tensor, alive: list[list[int]], widths: list[int], fill: float) -> torch.Tensor:
    """A current model's `[L, width_now]` scores placed at the dense indices still alive (`fill` elsewhere)."""
    out = torch.full((len(widths), max(widths)), fill, dtype=torch.float64)
    for l, idx in enumerate(alive):
        if idx:
            out[l, idx] = scores[l, :len(idx)].double().cpu()
    return out


def iterative_tables(dense: nn.Module, units: list[Unit], score: Callable[[nn.Module], dict[str, torch.Tensor]],
                     budget: Callable[[nn.Module], dict[str, torch.Tensor]] | None, settings: PruneCfg,
                     iterations: int, example_inputs: torch.Tensor,
                     refit: Callable[[nn.Module], None] | None = None, log: Callable[[str], None] = print,
                     latency=None) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """`(tables, keep)` after `iterations` steps. `score(model)` gives the choosing criterion's tables of a
    (partly pruned) model, `budget(model)` the tables that set the widths (None: the same), `refit(model)`
    re-fits a cut model in place (None: no re-fit)."""
    widths = {u.kind: u.widths(dense) for u in units}
    alive = {k: [list(range(w)) for w in ws] for k, ws in widths.items()}
    removed_at: dict[str, dict[tuple[int, int], int]] = {k: {} for k in widths}
    model, last = dense, None
    for step in range(1, iterations + 1):
        tables = score(model)
        plan_tables = budget(model) if budget is not None else tables
        last = {k: _dense_table(tables[k], alive[k], widths[k], 0.0) for k in widths}
        plan = {k: _dense_table(plan_tables[k].abs(), alive[k], widths[k], 0.0) for k in widths}
        share = step / iterations
        step_settings = settings.model_copy(update={
            "ratio": settings.ratio * share,
            "macs_ratio": None if settings.macs_ratio is None else settings.macs_ratio * share,
            "latency_ratio": None if settings.latency_ratio is None else settings.latency_ratio * share})
        keep = plan_keep(dense, units, plan, step_settings, example_inputs, latency)
        for k in widths:  # survivors of this step: the best-scoring of the units still alive
            new = []
            for l, idx in enumerate(alive[k]):
                n = min(keep[k][l], len(idx))
                chosen = kept_indices(last[k][l, idx], n) if n else []
                survivors = [idx[i] for i in chosen]
                for d in set(idx) - set(survivors):
                    removed_at[k][(l, d)] = step
                new.append(sorted(survivors))
            alive[k] = new
        model = copy.deepcopy(dense)
        for u in units:
            order = _order(last[u.kind], removed_at[u.kind], iterations)
            # the recipe's compensate reaches surgery as before (with "mean" it asks for means this loop lacks)
            prune_units(model, u, order, settings, example_inputs, keep=[len(a) for a in alive[u.kind]],
                        compensate=settings.compensate)
        if refit is not None:
            refit(model)
        log(f"[importance] iterative step {step}/{iterations}: "
            + ", ".join(f"{k} {sum(map(len, alive[k]))}/{sum(widths[k])} kept" for k in widths))
    tables = {k: _order(last[k], removed_at[k], iterations) for k in widths}
    return tables, {k: [len(a) for a in alive[k]] for k in widths}


def _order(last: torch.Tensor, removed_at: dict[tuple[int, int], int], iterations: int) -> torch.Tensor:
    """Survivors keep their last scores (made non-negative); a unit removed at step s scores
    -(iterations - s + 1), below every survivor and below the units removed after it."""
    out = last.clamp_min(0).clone()
    for (l, d), s in removed_at.items():
        out[l, d] = -(iterations - s + 1)
    return out
