"""The importance stage: a score for every unit of every kind in use (`[L, width]` each, higher = keep),
by the schedule `prune.mode` names (`schedule.SCHEDULES`).

One-shot (`prune.mode: oneshot`): the criterion scores every block of the dense model. Progressive:
block l is scored on the model whose blocks < l already lost their lowest-scoring units
(`schedule.Progressive`). In progressive mode, and when `prune.budget_kind` names another criterion,
this stage fixes the kept widths first (uniform, or with `prune.scope: global` from the budget
criterion's one-shot table ranked across blocks) and saves them as `<kind>.keep` beside the scores;
the prune stage then removes, in each block, exactly the lowest-scoring units beyond its width.
Progressive rows are checkpointed as they are scored, so an interrupted run resumes with the same
masks. Iterative (`prune.mode: iterative`, `schedule.py`): the target in `prune.iterations` steps,
each scored on the model cut (and re-fitted) by the steps before. A kind the criterion cannot score (heads, for the path criteria) is scored by the budget
criterion (`criteria.scorers`, `RunContext.scorer`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import dist
from ..criteria import ImportanceContext
from ..gates import activation_stats
from ..io import atomic_path, write_json
from ..paths import PathStats
from ..budget import plan_keep
from ..reconstruct import prefix_weight_for, refit
from ..schedule import SCHEDULES, ScoringJob
from .context import RunContext, device

NAME = "importance"
DISTRIBUTED = True  # every process scores its share of the images and the sums are added up
FILE = "importance.safetensors"  # `<kind>.scores`, `<kind>.act_mean`, `<kind>.act_abs_mean`, `<kind>.act_var`, `<kind>.keep`


def inputs(ctx: RunContext) -> dict:
    r = ctx.r
    inp = {**ctx.model_inputs(), "split": r.data.train_split, "importance": r.importance.model_dump(),
           "units": [u.kind for u in ctx.units], "reads": ["paths"] if ctx.needs_paths else []}
    if ctx.uses_path_images:
        inp["paths"] = r.paths.model_dump(include={"images_per_class", "steps", "seed", "batch_size"})
    if ctx.importance_fixes_widths:
        inp["prune"] = r.prune.model_dump(include={"ratio", "scope", "max_layer_ratio", "round_to", "mode",
                                                   "budget_kind", "macs_ratio", "min_layer_ratio", "latency_ratio"})
        inp["budget"] = ctx.budget_criterion.name
        if ctx.latency_table() is not None:
            inp["latency_table"] = ctx.latency_table().to_json()
    if r.prune.mode == "iterative":  # the steps re-fit the cut model when the recipe re-fits
        inp["iterative"] = r.prune.model_dump(include={"iterations", "reconstruct", "reconstruct_images",
                                                       "reconstruct_ridge", "reconstruct_prefix_share", "compensate"})
    return inp


def build(ctx: RunContext, out: Path) -> dict:
    """Write `importance.safetensors` (per unit kind: scores, activation mean/abs-mean/variance, and `keep`
    when this stage fixes the widths) and `importance.json`."""
    r, crit, budget = ctx.r, ctx.criterion, ctx.budget_criterion
    model, data_cfg, _ = ctx.model()
    model.to(device())
    loader = ctx.loader(r.data.train_split, data_cfg, r.importance.calibration_images, r.importance.seed, shard=True)
    acts = {}
    for unit in ctx.units:
        acts[unit.kind] = activation_stats(model, unit, ctx.batches(loader, "calibration"), reduce=dist.reduce_sum)
    stats = None
    if ctx.needs_paths:  # every class's statistics; with prune.classes only those classes', re-indexed
        stats = PathStats.load(ctx.run_dir.path("paths") / "stats.safetensors")
        if ctx.classes() is not None:
            stats = stats.select(ctx.classes())
    path_loader = ctx.path_loader(data_cfg, shard=True) if ctx.uses_path_images else None
    sctx = ImportanceContext(
        model, stats, lambda: ctx.batches(loader, "taylor"), acts, torch.randn(1, *data_cfg.input_size, device=device()),
        r.importance.seed, path_images=(lambda: ctx.batches(path_loader, "paths")) if path_loader else None,
        steps=r.paths.steps, objective=r.importance.objective, rows=r.paths.batch_size,
        progress=ctx.progress, reduce=dist.reduce_sum)
    start = time.perf_counter()
    ckpt = ctx.run_dir.root / ".checkpoints" / f"importance-{ctx.run_dir.key(NAME)}"
    tensors = {}
    scorer = {u.kind: ctx.scorer(u.kind) for u in ctx.units}

    def announce() -> None:
        if budget is not crit:
            ctx.log(f"[importance] {crit.name} scores {', '.join(k for k, c in scorer.items() if c is crit) or 'no kind'}; "
                    f"{budget.name} scores {', '.join(k for k, c in scorer.items() if c is budget) or 'no kind'} "
                    f"and sets the widths (prune.budget_kind)")

    job = ScoringJob(sctx, ctx.units, crit, scorer, budget, r.prune, plan_widths=lambda: _widths(ctx, sctx, ckpt),
                     fixes_widths=ctx.importance_fixes_widths, checkpoint=ckpt, announce=announce, log=ctx.log,
                     progress=ctx.progress, latency=ctx.latency_table(), refit=_refit(ctx, sctx, data_cfg))
    tables, keeps = SCHEDULES[r.prune.mode]().tables(job)
    for unit in ctx.units:
        table = tables[unit.kind].double().cpu().clone()  # may alias an activation statistic
        a = acts[unit.kind]
        tensors.update({f"{unit.kind}.scores": table.contiguous(), f"{unit.kind}.act_mean": a["channel_mean"],
                        f"{unit.kind}.act_abs_mean": a["abs_mean"], f"{unit.kind}.act_var": a["var"]})
        if unit.kind in keeps:
            tensors[f"{unit.kind}.keep"] = torch.tensor(keeps[unit.kind])
    dist.barrier()
    if dist.is_main():
        shutil.rmtree(ckpt, ignore_errors=True)
    seconds = time.perf_counter() - start
    info = {"kind": crit.name, "formula": crit.formula, "mode": r.prune.mode, "units": [u.kind for u in ctx.units],
            "scored_by": {k: c.name for k, c in scorer.items()},
            "scoring_seconds": seconds, "calibration_tokens": int(acts[ctx.units[0].kind]["tokens"]),
            "processes": dist.world(),
            "path_images": int(dist.reduce_sum(torch.tensor(len(path_loader.dataset)))) if path_loader else None,
            "skipped_rows": sorted(set(dist.gather_lists(ctx.skipped.get("calibration", []))))}
    if keeps:
        info.update(keep=keeps, budget_kind=budget.name)
    if dist.is_main():
        with atomic_path(out / FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(out / "importance.json", info)
    return info


def _widths(ctx: RunContext, sctx: ImportanceContext, ckpt: Path) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
    """Units each block keeps, per kind: uniform, or (scope global) the budget criterion's one-shot tables
    ranked across blocks (and kinds, with `prune.macs_ratio`); and those tables (empty when uniform), which
    also score the kinds the run's criterion cannot. The tables are checkpointed, so a resumed progressive
    run does not score them again."""
    pr = ctx.r.prune
    tables = {u.kind: torch.zeros(len(u.widths(sctx.model)), max(u.widths(sctx.model))) for u in ctx.units}
    scored = {}
    if pr.scope == "global":
        if (ckpt / "budget.safetensors").is_file():
            saved = load_file(ckpt / "budget.safetensors")
            tables = {u.kind: saved[f"{u.kind}.scores"] for u in ctx.units}
        else:
            tables = {k: t.double().cpu() for k, t in ctx.budget_criterion.tables(sctx, ctx.units).items()}
            if dist.is_main():
                ckpt.mkdir(parents=True, exist_ok=True)
                with atomic_path(ckpt / "budget.safetensors") as tmp:
                    save_file({f"{k}.scores": t.contiguous() for k, t in tables.items()}, str(tmp))
        scored = tables
    return plan_keep(sctx.model, ctx.units, tables, pr, sctx.example_inputs, ctx.latency_table()), scored


def _refit(ctx: RunContext, sctx: ImportanceContext, data_cfg):
    """How a schedule that cuts (iterative) re-fits its cut model when the recipe re-fits (None otherwise): on the
    images the reconstruct stage re-fits on, loaded at the first re-fit."""
    r, pr = ctx.r, ctx.r.prune
    if pr.reconstruct == "none":
        return None
    loader = None

    def refit_cut(m) -> None:
        nonlocal loader
        if loader is None:
            loader = ctx.loader(r.data.train_split, data_cfg, pr.reconstruct_images, r.importance.seed + 1, shard=True)
        refit(m, sctx.model, ctx.batches(loader, "reconstruct"), ridge=pr.reconstruct_ridge, reduce=dist.reduce_sum,
              prefix_weight=prefix_weight_for(sctx.model, pr.reconstruct_prefix_share))

    return refit_cut
