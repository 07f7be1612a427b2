"""The project's one training loop (accelerate): dense training for the embedded model, recovery
fine-tuning of pruned models. The same code runs on one CPU and under `accelerate launch`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # "bf16"/"fp16" on GPUs; CPU runs stay float32
    num_workers: int = 0
    seed: int = 0


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to zero."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _xy(batch):
    return batch[0], batch[1]


def evaluate(model, loader, accelerator=None, progress: bool = False) -> dict:
    """Top-1 and top-5 accuracy over a loader (gathered across processes when under accelerate)."""
    model.eval()
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
            x, y = _xy(batch)
            logits = model(x)
            k = min(5, logits.shape[-1])
            top = logits.topk(k, -1).indices
            if accelerator is not None:
                top, y = accelerator.gather_for_metrics((top, y))
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(-1).sum().item()
            total += y.numel()
    return {"top1": correct1 / max(1, total), "top5": correct5 / max(1, total), "images": total}


def train(model, train_set, eval_set=None, cfg: TrainConfig | None = None, progress: bool = True) -> list[dict]:
    """Train `model` on `(image, label, ...)` samples; returns per-epoch metrics."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = cfg or TrainConfig()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                                               num_workers=cfg.num_workers, drop_last=len(train_set) > cfg.batch_size)
    eval_loader = None if eval_set is None else torch.utils.data.DataLoader(
        eval_set, batch_size=cfg.batch_size * 2, num_workers=cfg.num_workers)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)))
    model, opt, train_loader, sched = accelerator.prepare(model, opt, train_loader, sched)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"train {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and accelerator.is_local_main_process))
        loss_sum, seen = 0.0, 0
        for batch in bar:
            x, y = _xy(batch)
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen)}
        if eval_loader is not None:
            row.update({f"eval_{k}": v for k, v in evaluate(model, eval_loader, accelerator).items()})
        history.append(row)
    accelerator.wait_for_everyone()
    return history
