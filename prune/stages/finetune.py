"""The finetune stage: recovery training of the pruned model (the project's accelerate loop),
optionally distilled from the dense model; resumable from its per-epoch checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import dist
from ..finetune import TrainConfig, train
from ..io import write_json
from ..models import ModelSpec
from ..pruning import load_pruned, save_pruned, structure_kept
from . import prune

NAME = "finetune"
DISTRIBUTED = True


def inputs(ctx) -> dict | None:
    r = ctx.r
    if r.finetune.epochs == 0:
        return None
    return {**ctx.eval_inputs(), "split": r.data.train_split, "finetune": r.finetune.model_dump(),
            "reads": [prune.NAME]}


def build(ctx, out: Path) -> dict:
    r, f = ctx.r, ctx.r.finetune
    dense, data_cfg, _ = ctx.model()
    model, structure = load_pruned(ctx.run_dir.path(prune.NAME))
    train_loader = ctx.loader(r.data.train_split, data_cfg, f.train_images, f.seed)
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                      warmup_epochs=f.warmup_epochs, label_smoothing=f.label_smoothing, grad_clip=f.grad_clip,
                      grad_accum=f.grad_accum, mixed_precision=f.mixed_precision, num_workers=r.data.num_workers,
                      seed=f.seed, distill_alpha=f.distill.alpha if f.distill else 0.0,
                      distill_temperature=f.distill.temperature if f.distill else 2.0)
    ckpt = ctx.run_dir.root / ".checkpoints" / f"finetune-{ctx.run_dir.keys[NAME]}"
    if (ckpt / "last" / "state.json").is_file():
        ctx.log(f"[finetune] resuming from {ckpt}")
    history = train(model, train_loader.dataset, None, cfg, teacher=dense if f.distill else None,
                    checkpoint_dir=ckpt, progress=ctx.progress)
    model = model.cpu().eval()
    spec = ModelSpec(structure["architecture"], structure["model_kwargs"])
    if dist.is_main():
        kept, dense_widths = structure_kept(structure)
        save_pruned(model, out, spec, kept, dense_widths, structure["data_config"], structure.get("classes"))
    dist.barrier()
    saved, _ = load_pruned(out)  # measure what was saved, in float32, outside any autocast wrapper
    acc = ctx.accuracy(saved, data_cfg, "finetuned")
    info = {"finetuned": acc, "epochs": f.epochs, "train_images": len(train_loader.dataset),
            "distill": f.distill.model_dump() if f.distill else None}
    if dist.is_main():
        write_json(out / "history.json", history)
        write_json(out / "metrics.json", info)
        shutil.rmtree(ckpt, ignore_errors=True)
    return info
