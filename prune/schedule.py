"""Schedules: how the importance stage turns criteria into score tables and, where scoring depends on
them, the kept widths. One policy per `prune.mode`, each a `Schedule` in `SCHEDULES`, so a new schedule
is a class here and a line in the registry:

- `OneShot`: every unit of the dense model scored once.
- `Progressive` (layer-progressive, `progressive_table`): score block t's units on the model whose blocks
  < t are already pruned, remove block t's lowest-scoring units, go on to block t + 1. This is the
  paper's layer-progressive locating (Algorithm 1: layer t's choice is made given the choices of layers
  < t) turned into a pruner: the "path" kept in each layer is the set of units that survive. A removed
  unit is a zero output, which is exactly what removing it structurally does to the forward pass, so
  blocks < t are pruned by masking (`gates.unit_masks`) and the model is cut structurally only once, by
  the prune stage, from the table this produces. `tests/test_progressive.py` checks that against
  scoring each block on a model pruned for real. Block scorers are the criteria's `score_block`
  (attribution with m steps or at alpha = 1, and Torch-Pruning's Taylor on the masked model).
- `Iterative` (`iterative_tables`): reach the target in `prune.iterations` equal steps, re-scoring the
  partly pruned (and, with `prune.reconstruct`, re-fitted) model between steps.

Iterative in detail: one-shot scores every unit of the dense model once, so it cannot see what removing several units
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
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from . import dist
from .budget import keep_mask, kept_indices, plan_keep
from .criteria import Criterion, ImportanceContext
from .gates import unit_masks
from .io import atomic_path
from .latency import LatencyTable
from .pruning import prune_units
from .recipe import PruneCfg
from .units import Unit

Tables = dict[str, torch.Tensor]  # unit kind -> `[L, width]` scores (higher = keep)
Widths = dict[str, list[int]]  # unit kind -> units each block keeps


@dataclass
class ScoringJob:
    """What a schedule scores with; the importance stage builds it from its run."""

    sctx: ImportanceContext  # the dense model (`sctx.model`), its images and activation statistics
    units: list[Unit]  # the kinds the run prunes
    criterion: Criterion  # the run's criterion (`importance.kind`)
    scorer: dict[str, Criterion]  # unit kind -> the criterion that scores it (the run's, or the budget's)
    budget: Criterion  # the criterion whose one-shot tables set the widths (`prune.budget_kind`)
    settings: PruneCfg  # the budget, and `prune.iterations`
    plan_widths: Callable[[], tuple[Widths, Tables]]  # the widths fixed before scoring, and the budget tables
    fixes_widths: bool  # whether this run fixes the widths before scoring (see `RunContext.importance_fixes_widths`)
    checkpoint: Path  # where rows of an interrupted scoring are kept
    announce: Callable[[], None]  # logs which criterion scores which kind (once the widths are planned)
    log: Callable[[str], None] = print
    progress: bool = True
    latency: LatencyTable | None = None
    refit: Callable[[nn.Module], None] | None = None  # re-fits a cut model in place (iterative, `prune.reconstruct`)

    def tables_of(self, model: nn.Module, which: dict[str, Criterion]) -> Tables:
        """The tables `which` criteria give `model` (a partly pruned copy of the dense one), one pass per criterion."""
        s = dataclasses.replace(self.sctx, model=model, _graph=None)  # Torch-Pruning's graph is the cut model's own
        out = {}
        for c in dict.fromkeys(which.values()):
            out.update(c.tables(s, [u for u in self.units if which[u.kind] is c]))
        return out


class Schedule(ABC):
    """A `prune.mode`: score tables per kind, and the widths when the schedule fixes them ({} when the prune
    stage plans them from the tables)."""

    name: ClassVar[str]
    fixes_widths: ClassVar[bool]  # scoring depends on the widths, so they are fixed before (or while) scoring

    @abstractmethod
    def tables(self, job: ScoringJob) -> tuple[Tables, Widths]:
        ...


class OneShot(Schedule):
    """Every unit of the dense model scored once, one pass for every kind a criterion scores."""

    name, fixes_widths = "oneshot", False

    def tables(self, job: ScoringJob) -> tuple[Tables, Widths]:
        keeps, budget_tables = job.plan_widths() if job.fixes_widths else ({}, {})
        job.announce()
        tables = {}
        for c in dict.fromkeys(job.scorer.values()):  # one pass for every kind a criterion scores, where it can
            mine = [u for u in job.units if job.scorer[u.kind] is c]
            tables.update({u.kind: budget_tables[u.kind] for u in mine if c is job.budget and u.kind in budget_tables})
            todo = [u for u in mine if u.kind not in tables]
            if todo:
                tables.update(c.tables(job.sctx, todo))
        return tables, keeps


class Progressive(Schedule):
    """Block by block on the masked model (`progressive_table`), to widths fixed first; every finished row is
    checkpointed, so an interrupted run resumes with the same masks."""

    name, fixes_widths = "progressive", True

    def tables(self, job: ScoringJob) -> tuple[Tables, Widths]:
        keeps, _ = job.plan_widths()
        job.announce()
        return {u.kind: self._table(job, u, keeps[u.kind]) for u in job.units}, keeps

    @staticmethod
    def _table(job: ScoringJob, unit: Unit, keep: list[int]) -> torch.Tensor:
        done = {}
        rows_file = job.checkpoint / f"rows-{unit.kind}.safetensors"
        if rows_file.is_file():
            done = {int(k): v for k, v in load_file(rows_file).items()}
            job.log(f"[importance] resuming progressive scoring after block {max(done)}")

        def checkpoint(t: int, row: torch.Tensor) -> None:
            done[t] = row
            if not dist.is_main():
                return
            job.checkpoint.mkdir(parents=True, exist_ok=True)
            with atomic_path(rows_file) as tmp:
                save_file({str(k): v.contiguous() for k, v in done.items()}, str(tmp))

        return progressive_table(job.sctx.model, unit, lambda t: job.scorer[unit.kind].score_block(job.sctx, unit, t),
                                 keep, done=done, on_block=checkpoint, progress=job.progress)


class Iterative(Schedule):
    """The target in `prune.iterations` steps (`iterative_tables`), each scored on the model cut (and re-fitted)
    by the steps before, with the run's criteria."""

    name, fixes_widths = "iterative", True

    def tables(self, job: ScoringJob) -> tuple[Tables, Widths]:
        budget = None
        if job.budget is not job.criterion:
            budget = lambda m: job.tables_of(m, {u.kind: job.budget for u in job.units})  # noqa: E731
        tables, keeps = iterative_tables(job.sctx.model, job.units, lambda m: job.tables_of(m, job.scorer), budget,
                                         job.settings, job.settings.iterations, job.sctx.example_inputs, job.refit,
                                         job.log, latency=job.latency)
        job.announce()
        return tables, keeps


SCHEDULES: dict[str, type[Schedule]] = {s.name: s for s in (OneShot, Progressive, Iterative)}


def progressive_table(model: nn.Module, unit: Unit, score_block: Callable[[int], torch.Tensor], keep: list[int], *,
                      done: dict[int, torch.Tensor] | None = None,
                      on_block: Callable[[int, torch.Tensor], None] | None = None,
                      progress: bool = True) -> torch.Tensor:
    """Score block 0, keep its `keep[0]` best units, score block 1 with block 0 pruned, ... -> `[L, width]`.

    `score_block(t)` is called with blocks < t masked to their kept units and returns block t's
    scores `[width]` (higher = keep). `done` holds rows of an interrupted run (block -> scores), which
    are reused, so a resumed run continues with the same masks; `on_block(t, row)` is called after
    each new row (to checkpoint it). The prune stage later keeps, in each block, exactly the
    units these masks kept (`budget.kept_indices`).
    """
    done = dict(done or {})
    L = len(unit.widths(model))
    masks: list[torch.Tensor | None] = [None] * L
    rows = []
    for t in tqdm(range(L), desc="progressive", unit="block", disable=not progress):
        if t in done:
            row = done[t].double().cpu()
        else:
            with unit_masks(model, unit, masks):
                row = score_block(t).double().cpu()
            if on_block is not None:
                on_block(t, row)
        rows.append(row)
        masks[t] = keep_mask(row, keep[t])
    return torch.stack(rows)



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
