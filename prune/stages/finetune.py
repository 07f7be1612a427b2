"""The finetune stage: recovery training of the pruned model (the project's accelerate loop),
optionally distilled from the dense model; resumable from its per-epoch checkpoint.

A slice of the training split (`finetune.holdout`) is held out of training and judges it: the pruned
model is evaluated on it before the first step and after every epoch, and the best weights, the
one-shot ones included, are what the stage saves. So recovery never returns a model worse on that
slice than the one it was given; `metrics.json` reports one-shot, best and last."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import dist
from ..artifacts import input_artifact, input_stage
from ..checkpoint import ModelSpec, load_pruned, save_pruned, structure_kept, write_model_card
from ..finetune import TrainConfig, recovery_summary, train
from ..io import write_json
from .context import RunContext

NAME = "finetune"
DISTRIBUTED = True


def inputs(ctx: RunContext) -> dict | None:
    r = ctx.r
    if r.finetune.epochs == 0:
        return None
    return {**ctx.eval_inputs(), "split": r.data.train_split, "finetune": r.finetune.model_dump(),
            "reads": [input_stage(r, NAME)]}


def build(ctx: RunContext, out: Path) -> dict:
    r, f = ctx.r, ctx.r.finetune
    dense, data_cfg, _ = ctx.model()
    model, structure = load_pruned(ctx.run_dir.path(input_stage(r, NAME)))
    held = ctx.holdout_rows(r.data.train_split, f.holdout, f.seed)
    train_loader = ctx.loader(r.data.train_split, data_cfg, f.train_images, f.seed, exclude=held)
    holdout = ctx.loader(r.data.train_split, data_cfg, None, f.seed, only=held).dataset if held else None
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                      warmup_epochs=f.warmup_epochs, label_smoothing=f.label_smoothing, grad_clip=f.grad_clip,
                      grad_accum=f.grad_accum, mixed_precision=f.mixed_precision, num_workers=r.data.num_workers,
                      seed=f.seed, distill_alpha=f.distill.alpha if f.distill else 0.0,
                      distill_temperature=f.distill.temperature if f.distill else 2.0,
                      distill_features=f.distill.feature_weight if f.distill and f.distill.features else 0.0)
    ckpt = ctx.run_dir.root / ".checkpoints" / f"finetune-{ctx.run_dir.key(NAME)}"
    if (ckpt / "last" / "state.json").is_file():
        ctx.log(f"[finetune] resuming from {ckpt}")
    history = train(model, train_loader.dataset, holdout, cfg, teacher=dense if f.distill else None,
                    checkpoint_dir=ckpt, progress=ctx.progress, keep_best=holdout is not None)
    model = model.cpu().eval()
    spec = ModelSpec(structure["architecture"], structure["model_kwargs"])
    if dist.is_main():
        kept, dense_widths = structure_kept(structure)
        source = input_artifact(r, NAME)
        refitted = ctx.stage_metrics(source.stage).get("refitted") if source.name == "refitted" else None
        card = ctx.model_card(NAME, dense=ctx.stage_metrics("baseline").get("dense"),
                              pruned=ctx.stage_metrics("evaluate").get("pruned"), refitted=refitted)
        save_pruned(model, out, spec, kept, dense_widths, structure["data_config"], structure.get("classes"),
                    label_names=ctx.label_names(), card=card)
    dist.barrier()
    saved, _ = load_pruned(out)  # measure what was saved, in float32, outside any autocast wrapper
    acc = ctx.accuracy(saved, data_cfg, "finetuned")
    info = {"finetuned": acc, "epochs": f.epochs, "train_images": len(train_loader.dataset),
            "precision": next((h["precision"] for h in reversed(history) if "precision" in h), None),
            "distill": f.distill.model_dump() if f.distill else None,
            "recovery": recovery_summary(history) if holdout is not None else None}
    if info["recovery"]:
        rec = info["recovery"]
        ctx.log(f"[finetune] held-out top1: one-shot {rec['oneshot']:.4f}, best {rec['best']:.4f} (epoch "
                f"{rec['best_epoch']}), last {rec['last']:.4f}; kept the best")
    if dist.is_main():
        write_json(out / "history.json", history)
        write_json(out / "metrics.json", info)
        write_model_card(out, saved, card.with_accuracy(finetuned=acc))
        shutil.rmtree(ckpt, ignore_errors=True)
    return info
