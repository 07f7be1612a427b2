"""Datasets: Hugging Face `datasets` (hub id or local directory) or the embedded digits set,
turned into tensors with the model's own timm preprocessing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, DataError
from .models import DataConfig

EMBEDDED_DATASETS = ("digits",)
_IMAGE_NAMES = ("img", "image", "pixel_values", "jpg", "png")
_LABEL_NAMES = ("label", "labels", "fine_label", "cls")


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def check_source(source: str) -> None:
    """Fail early, before any work, when a local dataset path does not exist."""
    if source in EMBEDDED_DATASETS:
        return
    if _looks_local(source) and not Path(source).expanduser().exists():
        raise ConfigError(f"dataset path {source} does not exist; give a Hugging Face dataset id, "
                          f"a local dataset directory, or one of: {', '.join(EMBEDDED_DATASETS)}")


def load_split(source: str, split: str):
    """One split of a dataset as a `datasets.Dataset`."""
    check_source(source)
    if source == "digits":
        from .digits import digits_dataset

        ds = digits_dataset()
        if split not in ds:
            raise ConfigError(f"dataset 'digits' has splits {', '.join(ds)}, not {split!r}")
        return ds[split]
    import datasets

    path = str(Path(source).expanduser()) if _looks_local(source) else source
    try:
        return datasets.load_dataset(path, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise ConfigError(f"dataset {source} has no split {split!r}: {e}") from None
        raise DataError(f"could not load dataset {source} split {split!r}: {e}") from None
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"could not load dataset {source}: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
                        "(offline? give a local directory)") from None


def find_columns(ds, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """The image and label column names: given, else detected from the features."""
    import datasets

    cols = list(ds.column_names)
    for given, what in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in cols:
            raise ConfigError(f"dataset has no {what} column {given!r}; its columns are {', '.join(cols)}")
    img = image_column or next((c for c in cols if isinstance(ds.features[c], datasets.Image)), None) \
        or next((c for c in _IMAGE_NAMES if c in cols), None)
    lab = label_column or next((c for c in cols if isinstance(ds.features[c], datasets.ClassLabel)), None) \
        or next((c for c in _LABEL_NAMES if c in cols), None)
    if img is None or lab is None:
        raise ConfigError(f"cannot tell the image and label columns among {', '.join(cols)}; "
                          "name them (image_column / label_column)")
    return img, lab


def make_transform(cfg: DataConfig):
    """timm's evaluation transform for the model (resize, center crop, normalise)."""
    from timm.data import create_transform

    return create_transform(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std,
                            interpolation=cfg.interpolation, crop_pct=cfg.crop_pct, is_training=False)


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Rows of a HF dataset as `(image tensor, label, row index)`; bad rows name their split and row."""

    ds: object
    transform: object
    image_column: str
    label_column: str
    split: str = "?"
    rows: list[int] | None = None
    num_classes: int | None = None
    skip_bad: bool = False  # return a BadRow marker (dropped by `collate`) instead of raising
    label_map: dict[int, int] | None = None  # original label -> the label the model predicts (class subsets)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.ds)

    def __getitem__(self, i: int):
        row = self.rows[i] if self.rows is not None else i
        try:  # datasets decodes the image when the row is read
            item = self.ds[row]
            img = item[self.image_column].convert("RGB")
            x = self.transform(img)
        except Exception as e:  # noqa: BLE001 - any decode failure is reported the same way
            return self._bad(row, f"image does not decode ({type(e).__name__}: {e})")
        y = int(item[self.label_column])
        if self.num_classes is not None and not 0 <= y < self.num_classes:
            return self._bad(row, f"label {y} is outside the model's {self.num_classes} classes")
        if self.label_map is not None:
            y = self.label_map[y]
        return x, y, row

    def _bad(self, row: int, reason: str):
        msg = f"split {self.split!r} row {row}: {reason}"
        if not self.skip_bad:
            raise DataError(msg + " (set data.skip_bad: true to skip such rows)")
        return BadRow(row, msg)


@dataclass
class BadRow:
    row: int
    reason: str


def collate(samples):
    """Batch `(x, y, row)` samples, dropping `BadRow`s: returns `(images, labels, rows, bad_rows)`."""
    good = [s for s in samples if not isinstance(s, BadRow)]
    bad = [s for s in samples if isinstance(s, BadRow)]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), bad
    return (torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good]),
            torch.tensor([s[2] for s in good]), bad)


def stack_rows(ds, transform, image_column: str, label_column: str, split: str, rows: list[int],
               num_classes: int | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` of a split as one image tensor `[n, C, H, W]` and its labels `[n]`, for code that keeps a
    few hundred images in memory (benchmarks, the export check)."""
    dataset = ImageDataset(ds, transform, image_column, label_column, split, rows, num_classes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    xs, ys = zip(*[(x, y) for x, y, _, _ in loader])
    return torch.cat(xs), torch.cat(ys)


def labels_of(ds, label_column: str) -> list[int]:
    return [int(v) for v in ds[label_column]]


def sample_per_class(labels: list[int], per_class: int, num_classes: int, seed: int = 0, *,
                     split: str = "?", allow_empty: bool = False) -> list[int]:
    """`per_class` row indices of each class, drawn with `seed` (fewer if a class has fewer rows).

    A class with no rows is an error unless `allow_empty` (then it is simply absent).
    """
    by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for row, y in enumerate(labels):
        if 0 <= y < num_classes:
            by_class[y].append(row)
    rng = random.Random(seed)
    rows = []
    for c, members in by_class.items():
        if not members and not allow_empty:
            raise DataError(f"split {split!r}: class {c} has no images; use a split that covers all {num_classes} "
                            "classes, or set data.skip_bad: true to go on without it")
        take = members if len(members) <= per_class else rng.sample(members, per_class)
        rows.extend(sorted(take))
    return sorted(rows)
