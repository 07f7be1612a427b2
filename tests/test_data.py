import io

import datasets
import pytest
from PIL import Image

from prune.data import ImageDataset, collate, find_columns, load_split, make_transform, sample_per_class
from prune.errors import ConfigError, DataError
from prune.models import DataConfig


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def local_dataset(tmp_path):
    """A local HF dataset directory of parquet shards, like ../shared/data/cifar10."""
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = {"img": [{"bytes": _png((i * 20, 0, 0)), "path": None} for i in range(9)], "label": [0, 1, 2] * 3}
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    return tmp_path


def test_local_parquet_dir_loads_with_detected_columns(local_dataset):
    ds = load_split(str(local_dataset), "test")
    assert len(ds) == 9 and find_columns(ds) == ("img", "label")
    tf = make_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3))
    x, y, row = ImageDataset(ds, tf, "img", "label", "test")[4]
    assert x.shape == (3, 8, 8) and y == 1 and row == 4


def test_bad_rows_name_split_and_row(local_dataset):
    ds = load_split(str(local_dataset), "test")
    tf = make_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(DataError, match="split 'test' row 2: label 2 is outside the model's 2 classes"):
        ImageDataset(ds, tf, "img", "label", "test", num_classes=2)[2]
    broken = ds.cast_column("img", datasets.Image(decode=False)).map(
        lambda r, i: {"img": {"bytes": b"not an image" if i == 5 else r["img"]["bytes"], "path": None}},
        with_indices=True).cast_column("img", datasets.Image())
    with pytest.raises(DataError, match="split 'test' row 5: image does not decode"):
        ImageDataset(broken, tf, "img", "label", "test")[5]
    lenient = ImageDataset(broken, tf, "img", "label", "test", skip_bad=True)
    x, y, rows, bad = collate([lenient[i] for i in range(9)])
    assert len(x) == 8 and 5 not in rows.tolist() and [b.row for b in bad] == [5]


def test_sampling_per_class():
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    rows = sample_per_class(labels, 2, 3, seed=0)
    assert len(rows) == 6 and sorted(labels[r] for r in rows) == [0, 0, 1, 1, 2, 2]
    assert rows == sample_per_class(labels, 2, 3, seed=0)
    with pytest.raises(DataError, match="split 'train': class 3 has no images"):
        sample_per_class(labels, 2, 4, split="train")
    assert len(sample_per_class(labels, 2, 4, allow_empty=True)) == 6


def test_column_errors(local_dataset):
    ds = load_split(str(local_dataset), "test")
    with pytest.raises(ConfigError, match="no image column 'pixels'"):
        find_columns(ds, image_column="pixels")
