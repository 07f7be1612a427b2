"""The reconstruct stage: re-fit the pruned model's branch output layers to the dense model's residual
stream, block by block (`prune/reconstruct.py`), on `prune.reconstruct_images` training images.
Runs when `prune.reconstruct` is not `none`; its model is what fine-tuning starts from."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import dist
from ..io import write_json
from ..models import ModelSpec
from ..pruning import load_pruned, save_pruned, structure_kept, write_model_card
from ..reconstruct import refit
from . import prune
from .context import device

NAME = "reconstruct"
DISTRIBUTED = True  # every process accumulates the normal equations of its share of the images


def inputs(ctx) -> dict | None:
    p = ctx.r.prune
    if p.reconstruct == "none":
        return None
    return {**ctx.eval_inputs(), "split": ctx.r.data.train_split, "seed": ctx.r.importance.seed,
            "reconstruct": p.model_dump(include={"reconstruct", "reconstruct_images", "reconstruct_ridge"}),
            "reads": [prune.NAME]}


def build(ctx, out: Path) -> dict:
    r, p = ctx.r, ctx.r.prune
    dense, data_cfg, _ = ctx.model()
    model, structure = load_pruned(ctx.run_dir.path(prune.NAME))
    loader = ctx.loader(r.data.train_split, data_cfg, p.reconstruct_images, r.importance.seed + 1, shard=True)
    start = time.perf_counter()
    rows = refit(model.to(device()), dense.to(device()), ctx.batches(loader, "reconstruct"),
                 ridge=p.reconstruct_ridge, reduce=dist.reduce_sum, progress=ctx.progress)
    seconds = time.perf_counter() - start
    model = model.cpu().eval()
    if dist.is_main():
        kept, dense_widths = structure_kept(structure)
        card = ctx.model_card(NAME, dense=ctx.stage_metrics("baseline").get("dense"),
                              pruned=ctx.stage_metrics("evaluate").get("pruned"))
        save_pruned(model, out, ModelSpec(structure["architecture"], structure["model_kwargs"]), kept, dense_widths,
                    structure["data_config"], structure.get("classes"), label_names=ctx.label_names(), card=card)
    dist.barrier()
    saved, _ = load_pruned(out)
    info = {"refitted": ctx.accuracy(saved, data_cfg, "refitted"), "method": p.reconstruct,
            "images": int(dist.reduce_sum(torch.tensor(len(loader.dataset))).item()),
            "ridge": p.reconstruct_ridge, "seconds": seconds, "branches": rows}
    ctx.log(f"[reconstruct] re-fitted {sum(not b['kept_old'] for b in rows)} of {len(rows)} branches in {seconds:.1f}s")
    if dist.is_main():
        write_json(out / "metrics.json", info)
        write_model_card(out, saved, card.with_accuracy(refitted=info["refitted"]))
    return {k: v for k, v in info.items() if k != "branches"}
