"""Train a small ViT on CIFAR-10 from scratch: the second reference model of the benchmarks.

The recipe is the one `../shared/models/vit_tiny_cifar10` was trained with (its README), only the
depth differs, so results on the two models separate "this model" from "this depth":

    python benchmarks/train_cifar_vit.py --data ../shared/data/cifar10 --depth 6 --out models/vit_d6_cifar10

4x4 patches on 32x32 images, width 192, 3 heads, 768 FFN neurons per block; AdamW (lr 1e-3, weight
decay 0.05), batch 128, one warm-up epoch then cosine, label smoothing 0.1, drop-path 0.1, random
crop (4 px reflect padding) and horizontal flip. About 8 minutes per epoch for 6 blocks on 2 cores.
The output directory (`config.json` + `model.safetensors`) loads with `prune --set model.name=DIR`.
A killed run resumes from the checkpoint of its last finished epoch (`OUT/checkpoint`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 dataset directory (parquet shards) or hub id")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=None, help="use only the first N training images (smoke tests)")
    args = p.parse_args(argv)

    import timm
    import torch
    from safetensors.torch import save_file
    from torchvision import transforms

    from prune.data import ImageDataset, find_columns, load_split
    from prune.finetune import TrainConfig, evaluate, train
    from prune.io import atomic_path, write_json

    kwargs = dict(img_size=32, patch_size=4, embed_dim=args.width, depth=args.depth, num_heads=args.heads,
                  mlp_ratio=4.0, num_classes=10, drop_path_rate=0.1)
    torch.manual_seed(args.seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    train_ds, test_ds = load_split(args.data, "train"), load_split(args.data, "test")
    img, lab = find_columns(train_ds)
    rows = None if args.train_images is None else list(range(min(args.train_images, len(train_ds))))
    train_set = ImageDataset(train_ds, train_tf, img, lab, "train", rows=rows)
    test_set = ImageDataset(test_ds, test_tf, img, lab, "test")
    out = Path(args.out)
    start = time.perf_counter()
    history = train(model, train_set, None, TrainConfig(
        epochs=args.epochs, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1,
        seed=args.seed), checkpoint_dir=out / "checkpoint")
    seconds = time.perf_counter() - start
    model.eval()
    from prune.data import collate

    acc = evaluate(model, torch.utils.data.DataLoader(test_set, batch_size=256, collate_fn=collate), progress=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(out / "config.json", {
        "architecture": "vit_tiny_patch16_224", "model_kwargs": kwargs, "dataset": "cifar10",
        "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "epochs": args.epochs, "seed": args.seed,
        "train_images": len(train_set), "test_top1": acc["top1"], "test_images": acc["images"],
        "train_seconds_this_call": round(seconds), "history": history,
        "command": "python benchmarks/train_cifar_vit.py " + " ".join(argv or __import__("sys").argv[1:])})
    print(f"{out}: test top-1 {acc['top1']:.4f} on {acc['images']} images")


if __name__ == "__main__":
    main()
