"""The embedded default: scikit-learn's bundled handwritten digits and a small ViT trained on them.

Both work offline on a fresh machine. The model ships in `prune/assets/digits_vit` and is
reproduced by `python -m prune.embedded` (the project's training loop, a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train_digits_vit(out_dir: str | Path, epochs: int = 60, seed: int = 0) -> dict:
    """Train the embedded digits ViT from scratch and write config.json + model.safetensors."""
    import timm
    import torch

    from .checkpoint import write_model_dir
    from .data import Split, load_images
    from .digits import DIGITS_ARCH, DIGITS_KWARGS, DIGITS_MEAN, DIGITS_STD, digits_dataset
    from .finetune import TrainConfig, evaluate, train
    from .models import DataConfig

    torch.manual_seed(seed)
    model = timm.create_model(DIGITS_ARCH, pretrained=False, **DIGITS_KWARGS)
    data_cfg = DataConfig((3, 8, 8), DIGITS_MEAN, DIGITS_STD, "bicubic", 1.0)
    ds = digits_dataset()
    train_set = load_images(Split(ds["train"], "img", "label", "train"), data_cfg)
    test_set = load_images(Split(ds["test"], "img", "label", "test"), data_cfg)
    history = train(model, train_set, test_set, TrainConfig(epochs=epochs, batch_size=64, lr=2e-3,
                                                            warmup_epochs=3, label_smoothing=0.1, seed=seed))
    model = model.eval()
    acc = evaluate(model, torch.utils.data.DataLoader(test_set, batch_size=256))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": DIGITS_ARCH, "model_kwargs": DIGITS_KWARGS, "mean": list(DIGITS_MEAN),
           "std": list(DIGITS_STD), "dataset": "digits", "epochs": epochs, "seed": seed,
           "test_top1": acc["top1"], "test_images": acc["images"], "history": history}
    write_model_dir(out, model.state_dict(), cfg)
    return cfg


if __name__ == "__main__":  # python -m prune.embedded [OUT_DIR]
    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "assets" / "digits_vit")
    print(json.dumps({k: v for k, v in train_digits_vit(target).items() if k != "history"}, indent=2))
