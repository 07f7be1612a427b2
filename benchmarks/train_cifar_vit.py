"""Train a small ViT on CIFAR-10 from scratch: the reference models of the benchmarks.

Two recipes. `--recipe basic` is the one `../shared/models/vit_tiny_cifar10` and `vit_d6_cifar10`
were trained with (7 epochs; random crop and flip). `--recipe strong` is the testbed recipe for a
model trained towards convergence, the hard case for pruning (issue 28): TrivialAugmentWide on top
of crop and flip, label smoothing 0.1, drop-path 0.1, AdamW (lr 1e-3, weight decay 0.05, batch 128),
5 warm-up epochs then cosine over `--epochs` (default 80):

    nice -n 19 python benchmarks/train_cifar_vit.py --data ../shared/data/cifar10 --recipe strong \\
        --depth 6 --out benchmarks/models/vit_d6s_cifar10

4x4 patches on 32x32 images, width 192, 3 heads, 768 FFN neurons per block. About 5-8 minutes per
epoch for 6 blocks on 2 cores in float32, depending on the machine; `--precision bf16` (bfloat16
autocast, float32 weights and AdamW state; explicit attention on the CPU) made a training step 2.0x
faster on a 2-core AVX512-BF16 machine (`benchmarks/train_step_speed.py`), where an epoch took 5.3
minutes, test evaluation included.

Resumable at any moment and for as long as it takes: every epoch ends with a checkpoint
(`OUT/checkpoint/last`: weights and optimizer tensors as safetensors, hyper-parameters, schedule
step and history as JSON; no pickles), and the model directory itself (`config.json` with the recipe,
epochs done, seconds and test top-1 on all test images; `model.safetensors`) is rewritten after every
epoch, so a stop at any time leaves a usable model. Run the same command again to continue; the data
order and drop-path of every epoch are seeded from `seed + epoch`, so a resumed run is the run that
was never stopped (in the same `--precision`: every row of `config.json`'s `log` says which trained
that epoch). The output directory loads with `prune --set model.name=DIR` like the given models.

`--cool-from DIR --epochs N` anneals a snapshot instead of training from scratch: DIR's weights, its
schedule's learning rate at that epoch decayed to zero over N epochs (cosine, a tenth of an epoch of
warm-up for the fresh AdamW moments), same augmentation. A mid-schedule snapshot of a long run is
trained at a high learning rate and is not at a minimum, so a pruning recovery that lowers the rate
gains accuracy the cut never cost; the annealed snapshot is the converged-for-its-budget model the
pruning benchmarks need (issue 26) while the long run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
RECIPES = {
    "basic": dict(epochs=7, warmup_epochs=1, lr=1e-3, weight_decay=0.05, label_smoothing=0.1, drop_path=0.1,
                  augment="crop_flip"),
    "strong": dict(epochs=80, warmup_epochs=5, lr=1e-3, weight_decay=0.05, label_smoothing=0.1, drop_path=0.1,
                   augment="crop_flip_trivialaugment"),
}


def train_transform(augment: str):
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
    if augment == "crop_flip_trivialaugment":
        steps.append(transforms.TrivialAugmentWide())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 dataset directory (parquet shards) or hub id")
    p.add_argument("--out", required=True, help="output model directory (resumed when it holds a checkpoint)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="basic")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="total epochs of the schedule (recipe default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: train under bfloat16 autocast (float32 weights and optimizer; a step 2.0x faster "
                   "on 2 cores with AVX512-BF16, emulated and slow without it); test top-1 is always measured in float32. A resumed run may "
                   "switch; every row of config.json's log says which precision trained that epoch")
    p.add_argument("--cool-from", default=None, help="anneal this model directory's weights to lr 0 over --epochs "
                   "epochs (from the learning rate its schedule had) instead of training from scratch")
    p.add_argument("--train-images", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images (smoke tests)")
    args = p.parse_args(argv)
    recipe = dict(RECIPES[args.recipe])
    if args.epochs is not None:
        recipe["epochs"] = args.epochs

    import timm
    import torch
    from safetensors.torch import save_file
    from torchvision import transforms

    from prune.data import ImageDataset, collate, find_columns, load_split
    from prune.finetune import TrainConfig, evaluate, train
    from prune.io import atomic_path, write_json

    out = Path(args.out)
    kwargs = dict(img_size=32, patch_size=4, embed_dim=args.width, depth=args.depth, num_heads=args.heads,
                  mlp_ratio=4.0, num_classes=10, drop_path_rate=recipe["drop_path"])
    torch.manual_seed(args.seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    cooled = None
    if args.cool_from:
        from safetensors.torch import load_file

        src = json.loads((Path(args.cool_from) / "config.json").read_text())
        if src["model_kwargs"] != kwargs:
            sys.exit(f"error: --cool-from {args.cool_from} is a {src['model_kwargs']} model; pass its "
                     "--depth/--width/--heads and --recipe")
        if args.epochs is None:
            sys.exit("error: --cool-from needs --epochs (how many epochs to anneal over)")
        model.load_state_dict(load_file(str(Path(args.cool_from) / "model.safetensors")))
        cooled = {"from": str(args.cool_from), "from_epoch": src["epochs_done"], "from_top1": src["test_top1"],
                  "from_lr": src["log"][-1]["lr"]}
        recipe.update(lr=cooled["from_lr"], warmup_epochs=0.1)
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train_ds, test_ds = load_split(args.data, "train"), load_split(args.data, "test")
    img, lab = find_columns(train_ds)
    rows = None if args.train_images is None else list(range(min(args.train_images, len(train_ds))))
    test_rows = None if args.test_images is None else list(range(min(args.test_images, len(test_ds))))
    train_set = ImageDataset(train_ds, train_transform(recipe["augment"]), img, lab, "train", rows=rows)
    test_loader = torch.utils.data.DataLoader(ImageDataset(test_ds, test_tf, img, lab, "test", rows=test_rows),
                                              batch_size=256, collate_fn=collate)
    previous = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    seconds_before = previous.get("train_seconds", 0)
    log = previous.get("log", [])  # one row per finished epoch, kept across restarts
    eval_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    start = time.perf_counter()

    def write_model(epoch: int, row: dict) -> None:
        """The model directory after `epoch`: weights, and config.json with its test top-1 (in float32: the
        trained module's forward may carry accelerate's autocast)."""
        eval_model.load_state_dict(model.state_dict())
        acc = evaluate(eval_model, test_loader)
        # which precision trained each epoch: a run resumed under another precision is not bit-identical to one
        # that never stopped (rows from before --precision existed were float32, the only precision then)
        log[:] = [{"precision": "fp32", **r} for r in log if r["epoch"] < epoch] + [
            {"epoch": epoch, "train_loss": round(row["train_loss"], 5), "lr": row["lr"], "test_top1": acc["top1"],
             "seconds": round(seconds_before + time.perf_counter() - start), "precision": row["precision"]}]
        with atomic_path(out / "model.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        write_json(out / "config.json", {
            "architecture": "vit_tiny_patch16_224", "model_kwargs": kwargs, "dataset": "cifar10",
            "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "recipe": args.recipe, **recipe,
            "epochs_done": epoch, "epochs_planned": recipe["epochs"], "seed": args.seed,
            "train_images": len(train_set), "test_top1": acc["top1"], "test_images": acc["images"],
            "train_seconds": round(seconds_before + time.perf_counter() - start),
            **({"cooled": cooled} if cooled else {}),
            "command": "python benchmarks/train_cifar_vit.py " + " ".join(argv), "log": log})
        print(f"epoch {epoch}/{recipe['epochs']}: train loss {row['train_loss']:.4f}, "
              f"test top-1 {acc['top1']:.4f} on {acc['images']} images", flush=True)

    train(model, train_set, None, TrainConfig(
        epochs=recipe["epochs"], batch_size=128, lr=recipe["lr"], weight_decay=recipe["weight_decay"],
        warmup_epochs=recipe["warmup_epochs"], label_smoothing=recipe["label_smoothing"], seed=args.seed,
        mixed_precision="no" if args.precision == "fp32" else "bf16"),
        checkpoint_dir=out / "checkpoint", on_epoch_end=write_model)
    done = json.loads((out / "config.json").read_text())
    print(f"{out}: test top-1 {done['test_top1']:.4f} on {done['test_images']} images after {done['epochs_done']} epochs")


if __name__ == "__main__":
    main()
