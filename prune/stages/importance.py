"""The importance stage: a score for every FFN neuron (`[L, D]`, higher = keep), one-shot or layer-progressive.

One-shot (`prune.mode: oneshot`): the criterion scores every block of the dense model. Progressive:
block l is scored on the model whose blocks < l already lost their lowest-scoring neurons
(`prune.progressive`). In progressive mode, and when `prune.budget_kind` names another criterion,
this stage fixes the kept widths first (uniform, or with `prune.scope: global` from the budget
criterion's one-shot table ranked across blocks) and saves them as `keep` beside the scores; the
prune stage then removes, in each block, exactly the lowest-scoring neurons beyond its width.
Progressive rows are checkpointed as they are scored, so an interrupted run resumes with the same
masks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import dist
from ..importance import ImportanceContext, activation_stats
from ..io import atomic_path, write_json
from ..paths import PathStats
from ..progressive import progressive_table
from ..pruning import PruneSettings, kept_counts


def build(p, out: Path) -> dict:
    """Write `importance.safetensors` (scores, activation mean/abs-mean/variance, and `keep` when this
    stage fixes the widths) and `importance.json`."""
    from ..pipeline import device

    r, crit, budget = p.r, p.criterion, p.budget_criterion
    model, data_cfg, _ = p.model()
    model.to(device())
    # under accelerate launch each process scores its share of the images and the sums are added up
    loader = p.loader(r.data.train_split, data_cfg, r.importance.calibration_images, r.importance.seed, shard=True)
    act = activation_stats(model, p.batches(loader, "calibration"), reduce=dist.reduce_sum)
    stats = None
    if p.needs_paths:  # every class's statistics; with prune.classes only those classes', re-indexed
        stats = PathStats.load(p.run_dir.path("paths") / "stats.safetensors")
        if p.classes() is not None:
            stats = stats.select(p.classes())
    path_loader = p.path_loader(data_cfg, shard=True) if crit.uses_path_images or budget.uses_path_images else None
    ctx = ImportanceContext(
        model, stats, lambda: p.batches(loader, "taylor"), act, torch.randn(1, *data_cfg.input_size, device=device()),
        r.importance.seed, path_images=(lambda: p.batches(path_loader, "paths")) if path_loader else None,
        steps=r.paths.steps, objective=r.importance.objective, rows=r.paths.batch_size,
        progress=p.progress, reduce=dist.reduce_sum)
    start = time.perf_counter()
    ckpt = p.run_dir.root / ".checkpoints" / f"importance-{p.run_dir.keys['importance']}"
    keep = _widths(p, ctx, ckpt) if p.importance_fixes_widths else None
    if r.prune.mode == "progressive":
        table = _progressive(p, ctx, keep, ckpt)
    else:
        table = crit.scores(ctx)
    dist.barrier()
    if dist.is_main():
        shutil.rmtree(ckpt, ignore_errors=True)
    seconds = time.perf_counter() - start
    table = table.double().cpu().clone()  # may alias an activation statistic
    extra = {} if keep is None else {"keep": torch.tensor(keep)}
    info = {"kind": crit.name, "formula": crit.formula, "mode": r.prune.mode, "scoring_seconds": seconds,
            "calibration_tokens": int(act["tokens"]), "processes": dist.world(),
            "path_images": int(dist.reduce_sum(torch.tensor(len(path_loader.dataset)))) if path_loader else None,
            "skipped_rows": sorted(set(dist.gather_lists(p.skipped.get("calibration", []))))}
    if keep is not None:
        info.update(keep=keep, budget_kind=budget.name)
    if dist.is_main():
        with atomic_path(out / "importance.safetensors") as tmp:
            save_file({"scores": table.contiguous(), "act_mean": act["mean"], "act_abs_mean": act["abs_mean"],
                       "act_var": act["var"], **extra}, str(tmp))
        write_json(out / "importance.json", info)
    return info


def _widths(p, ctx: ImportanceContext, ckpt: Path) -> list[int]:
    """Neurons each block keeps: uniform, or (scope global) the budget criterion's one-shot table ranked
    across blocks. The table is checkpointed, so a resumed progressive run does not score it again."""
    pr = p.r.prune
    settings = PruneSettings(ratio=pr.ratio, scope=pr.scope, max_layer_ratio=pr.max_layer_ratio, round_to=pr.round_to)
    widths = [f.out_features for f in ctx.fc1s]
    table = torch.zeros(len(widths), max(widths))
    if pr.scope == "global":
        if (ckpt / "budget.safetensors").is_file():
            table = load_file(ckpt / "budget.safetensors")["scores"]
        else:
            table = p.budget_criterion.scores(ctx).double().cpu()
            if dist.is_main():
                ckpt.mkdir(parents=True, exist_ok=True)
                with atomic_path(ckpt / "budget.safetensors") as tmp:
                    save_file({"scores": table.contiguous()}, str(tmp))
    return kept_counts(table, widths, settings)


def _progressive(p, ctx: ImportanceContext, keep: list[int], ckpt: Path) -> torch.Tensor:
    """Block by block on the masked model; every finished row is checkpointed."""
    done = {}
    if (ckpt / "rows.safetensors").is_file():
        done = {int(k): v for k, v in load_file(ckpt / "rows.safetensors").items()}
        p.log(f"[importance] resuming progressive scoring after block {max(done)}")

    def checkpoint(t: int, row: torch.Tensor) -> None:
        done[t] = row
        if not dist.is_main():
            return
        ckpt.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt / "rows.safetensors") as tmp:
            save_file({str(k): v.contiguous() for k, v in done.items()}, str(tmp))

    return progressive_table(ctx.model, lambda t: p.criterion.score_block(ctx, t), keep, done=done,
                             on_block=checkpoint, progress=p.progress)
