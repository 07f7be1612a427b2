"""The embedded digits data: scikit-learn's bundled 8x8 handwritten digits as a Hugging Face dataset.

A leaf module (it imports nothing of `prune`), so data loading, training and the embedded model can
all use it without importing each other.
"""

from __future__ import annotations

from functools import lru_cache

DIGITS_ARCH = "vit_tiny_patch16_224"
DIGITS_KWARGS = dict(img_size=8, patch_size=2, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4.0, num_classes=10)
DIGITS_MEAN, DIGITS_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@lru_cache(maxsize=1)
def digits_dataset():
    """sklearn's 1,797 8x8 digits as a `DatasetDict` (`img`, `label`): every 5th image is test."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [Image.fromarray((a * (255 / 16)).round().astype(np.uint8), mode="L") for a in d.images]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    splits = {}
    for name, keep in (("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)):
        rows = [i for i in range(len(imgs)) if keep(i)]
        splits[name] = datasets.Dataset.from_dict(
            {"img": [imgs[i] for i in rows], "label": [int(d.target[i]) for i in rows]}, features=features)
    return datasets.DatasetDict(splits)
