"""The project's one training loop (accelerate): dense training of the embedded model and recovery
fine-tuning of pruned models, optionally distilled from the dense model. The same code runs on one
CPU and under `accelerate launch` on several GPUs.

Checkpoints are written at the end of every epoch as safetensors (model, optimizer tensors) plus
JSON (optimizer hyper-parameters, scheduler, epoch), never pickle; accelerate's `save_state` is not
used because its optimizer and RNG files are pickles that `load_state` unpickles. Every epoch
reseeds from `seed + epoch`, so a resumed run continues exactly where an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import WEIGHTS_FILE, write_state


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
    mixed_precision: str = "no"  # "bf16" (GPUs, CPUs with AVX512-BF16/AMX), "fp16" (GPUs), "auto" (bf16 where native)
    num_workers: int = 0
    seed: int = 0
    distill_alpha: float = 0.0  # weight of the distillation loss (needs a teacher)
    distill_temperature: float = 2.0
    distill_features: float = 0.0  # weight of the per-block hidden-state loss to the teacher (0: logits only)


PRECISION_NAMES = {"no": "fp32"}  # accelerate's name for float32 training -> the one history rows and metrics use


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
    """Top-1 and top-5 accuracy over `(x, y, ...)` batches (gathered across processes under accelerate)."""
    model.eval()
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
            x, y = _xy(batch)
            if len(y) == 0:
                continue
            logits = model(x)
            k = min(5, logits.shape[-1])
            top = logits.topk(k, -1).indices
            if accelerator is not None:
                top, y = accelerator.gather_for_metrics((top, y))
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(-1).sum().item()
            total += y.numel()
    return {"top1": correct1 / max(1, total), "top5": correct5 / max(1, total), "images": total}


def distillation_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t


class BlockOutputs:
    """Forward hooks that keep the output of every block of a timm ViT (the residual stream at each depth);
    with `training_only`, only of forwards in training mode (evaluations keep nothing)."""

    def __init__(self, model, training_only: bool = False):
        self.outputs: list[torch.Tensor] = []

        def keep(module, inputs, output):
            if module.training or not training_only:
                self.outputs.append(output)

        self._handles = [b.register_forward_hook(keep) for b in model.blocks]

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the squared error between the residual streams, each divided by the teacher's mean
    square there, so every depth counts alike whatever the scale of its stream."""
    terms = [(s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- safe checkpoints
def save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, history: list[dict]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().contiguous().cpu() for i, st in opt["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    save_file(tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "param_groups": opt["param_groups"],
                                                "scheduler": sched, "history": history}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(path / WEIGHTS_FILE))
    flat = load_file(path / "optimizer.safetensors")
    opt_state: dict = {}
    for key, v in flat.items():
        if key == "_empty":
            continue
        i, name = key.split(".", 1)
        opt_state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    return state["epoch"], state["history"]


# ------------------------------------------------------------------------------------- the loop
def train(model, train_set, eval_set=None, cfg: TrainConfig | None = None, *, teacher=None,
          checkpoint_dir: str | Path | None = None, progress: bool = True,
          on_epoch_end: Callable[[int, dict], None] | None = None, keep_best: bool = False) -> list[dict]:
    """Train `model` on `(image, label, ...)` samples; returns per-epoch metrics.

    With `teacher` and `cfg.distill_alpha > 0` the loss is
    `(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`; `cfg.distill_features > 0` adds that
    weight times `feature_loss` of every block's output against the teacher's (hidden-state distillation:
    a signal at every depth of the pruned model, not only at its logits). With `checkpoint_dir`, the state
    after each epoch is saved there and an existing checkpoint is resumed from.
    With `keep_best` (needs `eval_set`, a held-out slice) the model is evaluated before training (row
    `epoch: 0`, the starting weights) and after every epoch, and ends with the weights of the best
    evaluation, the starting ones included (a later epoch replaces them only when strictly better), so
    training never hands back a model worse on the held-out slice than the one it was given.
    """
    cfg = cfg or TrainConfig()
    cfg = replace(cfg, mixed_precision=resolve_precision(cfg.mixed_precision))
    try:
        with explicit_attention(model, teacher, when=cfg.mixed_precision == "bf16" and not torch.cuda.is_available()):
            return _train(model, train_set, eval_set, cfg, teacher=teacher, checkpoint_dir=checkpoint_dir,
                          progress=progress, on_epoch_end=on_epoch_end, keep_best=keep_best)
    finally:
        _unprepare(model, teacher)


def _unprepare(*modules) -> None:
    """Undo what accelerate's `prepare` leaves on a module: its autocast forward wrapper and its "prepared" flag
    (with which a later `prepare` returns the module untouched). Without this a model trained in bf16 would go on
    running under bf16 autocast, and a later training of it (or of the same teacher) in another precision would
    silently keep the first one."""
    for m in modules:
        if m is None:
            continue
        d = m.__dict__
        original = d.pop("_original_forward", None)
        if original is not None:
            if getattr(original, "__func__", None) is type(m).forward:
                d.pop("forward", None)  # the class's own forward again
            else:
                d["forward"] = original
        d.pop("_is_accelerate_prepared", None)


def resolve_precision(name: str) -> str:
    """`auto`: bf16 where the hardware computes it natively (a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX), else float32 (`no`); other names are returned as given."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "no"


@contextmanager
def explicit_attention(*models, when: bool = True):
    """timm attention in its explicit form (q k^T, softmax, v) while inside, as it was after.

    PyTorch's CPU flash-attention kernel is slow on short sequences under bf16 autocast: on a 65-token
    ViT a training step ran 1.55x faster with the explicit form (0.53 s against 0.83 s for a batch of 128 on
    2 cores with AVX512-BF16; 2.0x float32's 1.07 s; in float32 the explicit form was 0.95x), so CPU bf16
    training uses it (`benchmarks/train_step_speed.py`, `results/train_step_speed_vit_d6.json`)."""
    mods = [m for model in models if model is not None and when for m in model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.fused_attn = b


def _restart_accelerator_state_for(mixed_precision: str) -> None:
    """accelerate keeps one mixed precision per process and refuses another; a later training in the same
    process (a sweep, a specialisation after a run, a test suite) may ask for one: its state is started
    afresh, keeping the process group (PartialState). Only for plain and DDP runs: FSDP, DeepSpeed and
    Megatron keep plugin state that a restart would lose, so there the precision must stay what it was."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    from .errors import ConfigError

    held = AcceleratorState._shared_state.get("_mixed_precision")
    if held is None or held == mixed_precision:
        return
    kind = AcceleratorState._shared_state.get("distributed_type")
    if kind not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise ConfigError(f"this process already trained with mixed precision {held!r} under {kind}; "
                          f"finetune.mixed_precision {mixed_precision!r} needs a new process")
    AcceleratorState._reset_state(reset_partial_state=False)


def _train(model, train_set, eval_set, cfg: TrainConfig, *, teacher, checkpoint_dir, progress, on_epoch_end,
           keep_best) -> list[dict]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .data import collate

    from accelerate import DataLoaderConfiguration

    from .errors import ConfigError

    _restart_accelerator_state_for(cfg.mixed_precision)
    # split_batches: `batch_size` is the global batch, cut into one slice per process, so several processes
    # take the same optimisation steps on the same images as one process would
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(f"the batch size {cfg.batch_size} (the global batch) must be divisible by the "
                          f"{accelerator.num_processes} processes")
    set_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    sampler = torch.utils.data.RandomSampler(train_set, generator=order)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                                               num_workers=cfg.num_workers, collate_fn=collate,
                                               drop_last=len(train_set) > cfg.batch_size)
    eval_loader = None if eval_set is None else torch.utils.data.DataLoader(
        eval_set, batch_size=cfg.batch_size * 2, num_workers=cfg.num_workers, collate_fn=collate)
    decay = lambda n, p: p.ndim > 1 and "pos_embed" not in n and "token" not in n  # noqa: E731
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if decay(n, p)], "weight_decay": cfg.weight_decay},
         {"params": [p for n, p in model.named_parameters() if not decay(n, p)], "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)))
    start_epoch, history = 0, []
    ckpt = Path(checkpoint_dir) / "last" if checkpoint_dir else None
    if ckpt is not None and (ckpt / "state.json").is_file():
        start_epoch, history = load_checkpoint(ckpt, model, opt, sched)
    model, opt, train_loader, sched = accelerator.prepare(model, opt, train_loader, sched)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True).eval()
    use_kd = teacher is not None and cfg.distill_alpha > 0
    use_features = teacher is not None and cfg.distill_features > 0
    if use_features:
        s_blocks = BlockOutputs(accelerator.unwrap_model(model), training_only=True)
        t_blocks = BlockOutputs(accelerator.unwrap_model(teacher))
    if keep_best and eval_loader is None:
        raise ConfigError("keep_best needs an evaluation set (the held-out slice)")
    best_dir = Path(checkpoint_dir) / "best" if checkpoint_dir else None
    best_state = None

    def remember(row: dict) -> None:
        """Keep the weights when `row` beats every earlier evaluation."""
        nonlocal best_state
        earlier = [h["eval_top1"] for h in history if h is not row and "eval_top1" in h]
        if earlier and row["eval_top1"] <= max(earlier):
            return
        best_state = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        if best_dir is not None and accelerator.is_main_process:
            write_state(best_dir / WEIGHTS_FILE, best_state)

    if keep_best and start_epoch == 0:
        row = {"epoch": 0, **{f"eval_{k}": v for k, v in evaluate(model, eval_loader, accelerator).items()}}
        history.append(row)
        remember(row)
    for epoch in range(start_epoch, cfg.epochs):
        set_seed(cfg.seed + epoch)  # data order, drop-path: identical whether or not the run was resumed
        order.manual_seed(cfg.seed + epoch)
        model.train()
        bar = tqdm(train_loader, desc=f"train {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                   disable=not (progress and accelerator.is_local_main_process))
        loss_sum, seen = 0.0, 0
        for batch in bar:
            x, y = _xy(batch)
            if len(y) == 0 and accelerator.num_processes == 1:
                continue
            with accelerator.accumulate(model):
                if len(y) == 0:  # this process's slice held only bad rows: join the gradient sum with zeros
                    logits = model(torch.zeros(1, 3, *accelerator.unwrap_model(model).patch_embed.img_size,
                                               device=accelerator.device))
                    loss = logits.sum() * 0
                else:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if (use_kd or use_features) and len(y):
                    with torch.no_grad():
                        t_logits = teacher(x)
                    if use_kd:
                        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distillation_loss(
                            logits, t_logits, cfg.distill_temperature)
                    if use_features:
                        loss = loss + cfg.distill_features * feature_loss(s_blocks.take(), t_blocks.take())
                elif use_features:
                    s_blocks.take()
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            rate = bar.format_dict.get("rate") or 0
            bar.set_postfix(loss=f"{loss_sum / max(1, seen):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}",
                            img_s=f"{rate * cfg.batch_size:.0f}")
        loss_sum, seen = accelerator.reduce(torch.tensor([loss_sum, seen], dtype=torch.float64,
                                                         device=accelerator.device), "sum").tolist()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "lr": sched.get_last_lr()[0],
               "precision": PRECISION_NAMES.get(cfg.mixed_precision, cfg.mixed_precision)}
        if eval_loader is not None:
            row.update({f"eval_{k}": v for k, v in evaluate(model, eval_loader, accelerator).items()})
        history.append(row)
        if keep_best:
            remember(row)
            accelerator.wait_for_everyone()
        if ckpt is not None and accelerator.is_main_process:
            save_checkpoint(ckpt, accelerator.unwrap_model(model), opt, sched, epoch + 1, history)
        accelerator.wait_for_everyone()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if use_features:
        s_blocks.close()
        t_blocks.close()
    if keep_best:
        if best_state is None:  # resumed: the best so far was written before the interruption
            from safetensors.torch import load_file

            best_state = load_file(best_dir / WEIGHTS_FILE)
        accelerator.unwrap_model(model).load_state_dict(best_state)
    return history


def recovery_summary(history: list[dict]) -> dict:
    """One-shot (before training), best and last held-out top-1 of a `keep_best` history, and which epoch won."""
    evals = [h for h in history if "eval_top1" in h]
    best = evals[0]
    for h in evals[1:]:
        if h["eval_top1"] > best["eval_top1"]:
            best = h
    return {"oneshot": evals[0]["eval_top1"], "best": best["eval_top1"], "last": evals[-1]["eval_top1"],
            "best_epoch": best["epoch"], "holdout_images": evals[0]["eval_images"]}
