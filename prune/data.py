"""Datasets: Hugging Face `datasets` (hub id or local directory) or the embedded digits set,
turned into tensors with the model's own timm preprocessing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BadInputError, ConfigError, DataError
from .models import DataConfig

EMBEDDED_DATASETS = ("digits",)
_IMAGE_NAMES = ("img", "image", "pixel_values", "jpg", "png")
_LABEL_NAMES = ("label", "labels", "fine_label", "cls")
# the largest image prune decodes: PIL's own decompression-bomb warning threshold (about 256 MiB as RGB); the
# size is read from the header, so a bomb (a few KB of PNG claiming 40000 x 40000 pixels) is never decoded
MAX_IMAGE_PIXELS = 89_478_485


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
        shards = _parquet_shards(path)
        ds = (datasets.load_dataset("parquet", data_files=shards, split=split) if shards
              else datasets.load_dataset(path, split=split))
        ds.prune_image_roots = image_roots(source)
        return ds
    except ValueError as e:
        if "split" in str(e).lower():
            raise ConfigError(f"dataset {source} has no split {split!r}: {e}") from None
        raise DataError(f"could not load dataset {source} split {split!r}: {e}") from None
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"could not load dataset {source}: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
                        "(offline? give a local directory)") from None


def _parquet_shards(path: str) -> dict[str, list[str]] | None:
    """`{split: [parquet shards]}` of a local directory of parquet shards named by split that also holds
    other files (the images a path column names): only the `.parquet` files are rows. None for a directory
    of parquet shards alone (and its README/JSON metadata) or without any: `datasets` decides, as always."""
    import itertools

    p = Path(path)
    if not p.is_dir():
        return None
    files = [f for f in itertools.islice(p.rglob("*"), 100_000) if f.is_file() and not f.name.startswith(".")]
    if not any(f.suffix == ".parquet" for f in files) or all(f.suffix in (".parquet", ".md", ".json", ".yaml")
                                                             for f in files):
        return None
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = DataFilesDict.from_patterns(get_data_patterns(str(p)), base_path=str(p), allowed_extensions=[".parquet"])
    return {str(k): list(v) for k, v in files.items() if len(v)}


def image_roots(source: str) -> tuple[Path, ...]:
    """The directories an image given as a file path may be read from: a local dataset's own directory; for
    a hub dataset, the Hugging Face caches its files were downloaded to."""
    if source in EMBEDDED_DATASETS:
        return ()
    if _looks_local(source):
        p = Path(source).expanduser().resolve()
        return (p if p.is_dir() else p.parent,)
    import datasets
    from huggingface_hub import constants

    return (Path(datasets.config.HF_DATASETS_CACHE).resolve(), Path(constants.HF_HUB_CACHE).resolve())


def _encoded(feature) -> bool:
    """A column of encoded image files: bytes (what pyarrow/pandas write), or a `{bytes, path}` struct (what
    `datasets` writes for an `Image` feature, read back without its metadata)."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary")
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}


def find_columns(ds, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """The image and label column names: given, else detected from the features (an `Image` feature first,
    then a column of encoded image bytes, then a column with a usual image name)."""
    import datasets

    cols = list(ds.column_names)
    for given, what in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in cols:
            raise ConfigError(f"dataset has no {what} column {given!r}; its columns are {', '.join(cols)}")
    img = image_column or next((c for c in cols if isinstance(ds.features[c], datasets.Image)), None) \
        or next((c for c in cols if _encoded(ds.features[c])), None) \
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


class ImageRefused(ValueError):
    """An image prune will not decode (too many pixels, a path outside the dataset, not an image at all)."""


def open_image(value, roots: tuple[Path, ...] = ()):
    """One image cell as an RGB PIL image. The cell may be a PIL image, encoded bytes (PNG, JPEG, ...), a
    `{bytes, path}` struct (`datasets.Image` storage), or a file path: relative to the first of `roots` (the
    dataset's directory), or absolute inside one of them; a path leaving them (`..`, a link out, a URL) is
    refused. The pixel count is read from the header and checked against `MAX_IMAGE_PIXELS` before any
    pixel is decoded. Raises `ImageRefused`, or PIL's own errors for data that does not decode."""
    import io
    import warnings

    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if isinstance(value, Image.Image):
                img = value
            elif isinstance(value, (bytes, bytearray, memoryview)):
                img = Image.open(io.BytesIO(bytes(value)))
            elif isinstance(value, str):
                img = Image.open(_image_path(value, roots))
            else:
                raise ImageRefused(f"the image cell holds {type(value).__name__}, not an image (give encoded image "
                                   "bytes, a datasets Image feature, or a file path inside the dataset directory)")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own check at open
            import re

            n = re.search(r"\((\d+) pixels\)", str(e))
            raise ImageRefused(f"image has {int(n[1]) if n else 'too many':,} pixels, more than prune decodes "
                               f"({MAX_IMAGE_PIXELS:,}): a decompression bomb?") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageRefused(f"image is {w}x{h} = {w * h:,} pixels, more than prune decodes ({MAX_IMAGE_PIXELS:,}): "
                           "a decompression bomb?")
    return img.convert("RGB")


def _image_path(value: str, roots: tuple[Path, ...]) -> Path:
    """The regular file an image path names, inside the dataset's directory (`open_image`)."""
    from .errors import PruneError
    from .io import regular_file

    where = "the dataset directory" if len(roots) == 1 else "the Hugging Face cache"
    if "://" in value or value.startswith(("hf:", "s3:", "gs:")):
        raise ImageRefused(f"image path {value[:200]!r} is a URL; prune reads image files only inside {where}")
    if not roots:
        raise ImageRefused(f"image given as the path {value[:200]!r}, but this dataset has no directory to read it from")
    path = Path(value)
    candidate = path if path.is_absolute() else roots[0] / path
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImageRefused(f"image file {value[:200]!r} does not exist (paths are relative to {roots[0]})") from None
    if not any(real.is_relative_to(r) for r in roots):
        raise ImageRefused(f"image path {value[:200]!r} leads to {real}, outside {where}; refused")
    try:
        return regular_file(real, "image file")
    except PruneError as e:
        raise ImageRefused(str(e)) from None


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
    roots: tuple[Path, ...] | None = None  # where image paths may point (default: `load_split`'s, the dataset's dir)

    def __post_init__(self):
        import datasets

        if self.roots is None:
            self.roots = tuple(getattr(self.ds, "prune_image_roots", ()))
        feature = getattr(self.ds, "features", {}).get(self.image_column)
        if isinstance(feature, datasets.Image) and feature.decode:  # prune decodes (`open_image`), not datasets
            self.ds = self.ds.cast_column(self.image_column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.ds)

    def __getitem__(self, i: int):
        row = self.rows[i] if self.rows is not None else i
        try:
            item = self.ds[row]
            x = self.transform(open_image(item[self.image_column], self.roots))
        except ImageRefused as e:
            return self._bad(row, str(e))
        except Exception as e:  # noqa: BLE001 - any decode failure is reported the same way
            return self._bad(row, f"image does not decode ({type(e).__name__}: {str(e)[:200]})")
        try:
            y = int(item[self.label_column])
        except (TypeError, ValueError):
            return self._bad(row, f"label {str(item[self.label_column])[:80]!r} is not a class index")
        if self.num_classes is not None and not 0 <= y < self.num_classes:
            return self._bad(row, f"label {y} is outside the model's {self.num_classes} classes")
        if self.label_map is not None:
            y = self.label_map[y]
        return x, y, row

    def _bad(self, row: int, reason: str):
        msg = f"split {self.split!r} row {row}: {reason}"
        if not self.skip_bad:
            raise BadInputError(msg + " (set data.skip_bad: true to skip such rows)")
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


@dataclass(frozen=True)
class Split:
    """One split of a dataset with its image and label column names (`open_split`)."""

    ds: object  # a `datasets.Dataset`
    image_column: str
    label_column: str
    name: str

    def labels(self) -> list[int]:
        return labels_of(self.ds, self.label_column)


def open_split(source: str, split: str, image_column: str | None = None, label_column: str | None = None) -> Split:
    """`load_split` and its columns (`find_columns`: given, else detected)."""
    ds = load_split(source, split)
    return Split(ds, *find_columns(ds, image_column, label_column), split)


def load_images(split: Split, data_cfg: DataConfig, rows: list[int] | None = None, *, num_classes: int | None = None,
                skip_bad: bool = False, label_map: dict[int, int] | None = None,
                transform=None) -> ImageDataset:
    """`rows` of a split (all of them if None) as model inputs `(image, label, row)`, prepared with the model's
    timm evaluation transform (`make_transform(data_cfg)`, or `transform`): the one way the stages, the
    commands and the benchmarks turn a split into images."""
    return ImageDataset(split.ds, transform if transform is not None else make_transform(data_cfg), split.image_column,
                        split.label_column, split.name, rows, num_classes, skip_bad, label_map)


def stack(dataset: ImageDataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset as one image tensor `[n, C, H, W]` and its labels `[n]`, for code that keeps a few hundred
    images in memory (benchmarks, the export check)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    xs, ys = zip(*[(x, y) for x, y, _, _ in loader])
    return torch.cat(xs), torch.cat(ys)


def stack_rows(split: Split, data_cfg: DataConfig, rows: list[int], num_classes: int | None = None,
               batch_size: int = 256, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` of a split as one image tensor and its labels (`load_images`, then `stack`)."""
    return stack(load_images(split, data_cfg, rows, num_classes=num_classes, transform=transform), batch_size)


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
            raise BadInputError(f"split {split!r}: class {c} has no images; use a split that covers all {num_classes} "
                            "classes, or set data.skip_bad: true to go on without it")
        take = members if len(members) <= per_class else rng.sample(members, per_class)
        rows.extend(sorted(take))
    return sorted(rows)
