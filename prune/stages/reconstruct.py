"""The reconstruct stage: re-fit the pruned model to the dense model's residual stream, block by block
(`prune/reconstruct.py`), on `prune.reconstruct_images` training images: the branch output layers by
least squares (`lstsq`), or every parameter of each block by Adam (`blockwise`); then the classifier
by least squares on the dense logits of `prune.reconstruct_head_images` images. Runs when
`prune.reconstruct` is not `none`; its model is what fine-tuning starts from."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import dist
from ..artifacts import input_stage
from ..checkpoint import ModelSpec, load_pruned, save_pruned, structure_kept, write_model_card
from ..io import write_json
from ..reconstruct import blockwise, prefix_weight_for, refit, refit_head
from .context import RunContext, device

NAME = "reconstruct"
DISTRIBUTED = True  # every process sums the normal equations (or gradients) of its share of the images
BLOCKWISE = ("reconstruct_steps", "reconstruct_lr", "reconstruct_start")  # the fields only blockwise reads


def inputs(ctx: RunContext) -> dict | None:
    p = ctx.r.prune
    if p.reconstruct == "none":
        return None
    fields = {"reconstruct", "reconstruct_images", "reconstruct_ridge", "reconstruct_prefix_share",
              "reconstruct_head_images",
              *(BLOCKWISE if p.reconstruct == "blockwise" else ())}
    return {**ctx.eval_inputs(), "split": ctx.r.data.train_split, "seed": ctx.r.importance.seed,
            "reconstruct": p.model_dump(include=fields),
            "reads": [input_stage(ctx.r, NAME)]}


def build(ctx: RunContext, out: Path) -> dict:
    r, p = ctx.r, ctx.r.prune
    dense, data_cfg, _ = ctx.model()
    model, structure = load_pruned(ctx.run_dir.path(input_stage(ctx.r, NAME)))
    loader = ctx.loader(r.data.train_split, data_cfg, p.reconstruct_images, r.importance.seed + 1, shard=True)
    model, dense = model.to(device()), dense.to(device())
    start = time.perf_counter()
    weight = prefix_weight_for(model, p.reconstruct_prefix_share)
    if p.reconstruct == "blockwise":
        rows = blockwise(model, dense, _with_rows(ctx, loader, "reconstruct"), steps=p.reconstruct_steps,
                         lr=p.reconstruct_lr, start=p.reconstruct_start, ridge=p.reconstruct_ridge,
                         seed=r.importance.seed, prefix_weight=weight, reduce=dist.reduce_sum,
                         gather=dist.gather_lists, progress=ctx.progress)
    else:
        rows = refit(model, dense, ctx.batches(loader, "reconstruct"), ridge=p.reconstruct_ridge,
                     reduce=dist.reduce_sum, progress=ctx.progress, prefix_weight=weight)
    if p.reconstruct_head_images:
        heads = ctx.loader(r.data.train_split, data_cfg, p.reconstruct_head_images, r.importance.seed + 2, shard=True)
        head = refit_head(model, dense, ctx.batches(heads, "reconstruct"), ridge=p.reconstruct_ridge,
                          reduce=dist.reduce_sum)
        rows += [head] if head else []
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
            "ridge": p.reconstruct_ridge, "prefix_share": p.reconstruct_prefix_share, "prefix_weight": weight,
            "seconds": seconds, "branches": rows,
            **(p.model_dump(include=set(BLOCKWISE)) if p.reconstruct == "blockwise" else {})}
    ctx.log(f"[reconstruct] {p.reconstruct}: re-fitted {sum(not b['kept_old'] for b in rows)} of {len(rows)} "
            f"{'blocks and branches' if p.reconstruct == 'blockwise' else 'branches'} in {seconds:.1f}s")
    if dist.is_main():
        write_json(out / "metrics.json", info)
        write_model_card(out, saved, card.with_accuracy(refitted=info["refitted"]))
    return {k: v for k, v in info.items() if k != "branches"}


def _with_rows(ctx: RunContext, loader, key: str):
    """`(images, dataset rows)` batches on the device (bad rows counted under `key`, as `ctx.batches` does):
    the rows name each image across processes, so that every process draws the same minibatches."""
    for x, y, rows, bad in loader:
        ctx.skipped.setdefault(key, []).extend(b.row for b in bad)
        if len(y):
            yield x.to(device()), torch.as_tensor(rows)
