"""The importance stage: a score for every FFN neuron (`[L, D]`, higher = keep), one-shot or layer-progressive.

One-shot (`prune.mode: oneshot`): the criterion scores every block of the dense model. Progressive:
block l is scored on the model whose blocks < l already lost their lowest-scoring neurons
(`prune.progressive`); the kept widths are fixed first (uniform, or with `prune.scope: global`
from the same criterion's one-shot table), saved as `keep` beside the scores, and the prune stage
removes exactly the neurons the progressive masks removed. Each block's row is checkpointed as
it is scored, so an interrupted progressive run resumes with the same masks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..importance import ImportanceContext, activation_stats
from ..io import atomic_path, write_json
from ..paths import PathStats
from ..progressive import progressive_table
from ..pruning import PruneSettings, kept_counts


def build(p, out: Path) -> dict:
    """Write `importance.safetensors` (scores, activation mean/abs-mean/variance, progressive: keep) and `importance.json`."""
    from ..pipeline import device

    r, crit = p.r, p.criterion
    model, data_cfg, _ = p.model()
    model.to(device())
    num_classes = model.num_classes
    loader = p.loader(r.data.train_split, data_cfg, num_classes, r.importance.calibration_images, r.importance.seed)
    act = activation_stats(model, p.batches(loader, "calibration"))
    stats = PathStats.load(p.run_dir.path("paths") / "stats.safetensors") if crit.needs_paths else None
    path_loader = p.path_loader(data_cfg, num_classes) if crit.uses_path_images else None
    ctx = ImportanceContext(
        model, stats, lambda: p.batches(loader, "taylor"), act, torch.randn(1, *data_cfg.input_size, device=device()),
        r.importance.seed, path_images=(lambda: p.batches(path_loader, "paths")) if path_loader else None,
        steps=r.paths.steps, objective=r.importance.objective, rows=r.paths.batch_size, progress=p.progress)
    start = time.perf_counter()
    tensors = {}
    if r.prune.mode == "progressive":
        table, keep = _progressive(p, ctx)
        tensors["keep"] = torch.tensor(keep)
    else:
        table = crit.scores(ctx)
    seconds = time.perf_counter() - start
    table = table.double().cpu().clone()  # may alias an activation statistic
    with atomic_path(out / "importance.safetensors") as tmp:
        save_file({"scores": table.contiguous(), "act_mean": act["mean"], "act_abs_mean": act["abs_mean"],
                   "act_var": act["var"], **tensors}, str(tmp))
    info = {"kind": crit.name, "formula": crit.formula, "mode": r.prune.mode, "scoring_seconds": seconds,
            "calibration_tokens": int(act["tokens"]),
            "path_images": len(path_loader.dataset) if path_loader is not None else None,
            "skipped_rows": sorted(set(p.skipped.get("calibration", [])))}
    if "keep" in tensors:
        info["keep"] = tensors["keep"].tolist()
    write_json(out / "importance.json", info)
    return info


def _progressive(p, ctx: ImportanceContext) -> tuple[torch.Tensor, list[int]]:
    pr = p.r.prune
    settings = PruneSettings(ratio=pr.ratio, scope=pr.scope, max_layer_ratio=pr.max_layer_ratio, round_to=pr.round_to)
    widths = [f.out_features for f in ctx.fc1s]
    ckpt = p.run_dir.root / ".checkpoints" / f"importance-{p.run_dir.keys['importance']}"
    budget_table = torch.zeros(len(widths), max(widths))
    if pr.scope == "global":  # the widths come from the same criterion scored in one shot
        if (ckpt / "budget.safetensors").is_file():
            budget_table = load_file(ckpt / "budget.safetensors")["scores"]
        else:
            budget_table = p.criterion.scores(ctx).double().cpu()
            ckpt.mkdir(parents=True, exist_ok=True)
            with atomic_path(ckpt / "budget.safetensors") as tmp:
                save_file({"scores": budget_table.contiguous()}, str(tmp))
    keep = kept_counts(budget_table, widths, settings)
    done = {}
    if (ckpt / "rows.safetensors").is_file():
        done = {int(k): v for k, v in load_file(ckpt / "rows.safetensors").items()}
        p.log(f"[importance] resuming progressive scoring after block {max(done)}")

    def checkpoint(t: int, row: torch.Tensor) -> None:
        done[t] = row
        ckpt.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt / "rows.safetensors") as tmp:
            save_file({str(k): v.contiguous() for k, v in done.items()}, str(tmp))

    table = progressive_table(ctx.model, lambda t: p.criterion.score_block(ctx, t), keep, done=done,
                              on_block=checkpoint, progress=p.progress)
    shutil.rmtree(ckpt, ignore_errors=True)
    return table, keep
