import io
import os

import datasets
import pytest
from PIL import Image

from prune.data import ImageDataset, collate, find_columns, load_split, make_transform, sample_per_class
from prune.errors import BadInputError, ConfigError, DataError
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


# ------------------------------------------------------------------ every documented image layout of a shard
def _write_layout(root, layout: str, splits=(("train", 30), ("test", 10))):
    """Parquet shards written without `datasets` (pyarrow / pandas), images as `layout`:
    binary (encoded PNG bytes), struct ({bytes, path}, as datasets stores an Image), paths (file names
    relative to the directory, the images beside the shards)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in splits:
        pngs = [_png(tuple(int(v) for v in g.integers(0, 255, 3))) for _ in range(n)]
        labels = [i % 10 for i in range(n)]
        name = root / f"{split}-00000-of-00001.parquet"
        if layout == "binary":  # what pandas writes for a column of bytes objects
            pd.DataFrame({"image": pngs, "label": labels}).to_parquet(name)
        elif layout == "struct":
            pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in pngs], "label": labels}), name)
        else:
            (root / "images").mkdir(exist_ok=True)
            for i, b in enumerate(pngs):
                (root / "images" / f"{split}_{i}.png").write_bytes(b)
            pq.write_table(pa.table({"image": [f"images/{split}_{i}.png" for i in range(n)], "label": labels}), name)
    return root


@pytest.mark.parametrize("layout", ["binary", "struct", "paths"])
def test_every_image_layout_decodes(tmp_path, layout):
    root = _write_layout(tmp_path / "data", layout)
    ds = load_split(str(root), "test")
    assert len(ds) == 10 and find_columns(ds) == ("image", "label")
    tf = make_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3))
    x, y, row = ImageDataset(ds, tf, "image", "label", "test")[3]
    assert x.shape == (3, 8, 8) and y == 3 and row == 3


@pytest.mark.parametrize("layout", ["binary", "struct", "paths"])
def test_a_recipe_runs_on_every_image_layout(tmp_path, capsys, layout):
    import json

    from prune.cli import main

    root = _write_layout(tmp_path / "data", layout)
    sets = [f"data.source={root}", "importance.calibration_images=20", "data.eval_images=null", "finetune.epochs=0",
            "export.enabled=false", "bench.enabled=false"]
    assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet",
                 *sum([["--set", s] for s in sets], [])]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["accuracy"]["dense"]["images"] == 10 and summary["accuracy"]["pruned"]["images"] == 10
    assert not any(summary.get("skipped_rows", {}).values())


def test_image_paths_cannot_leave_the_dataset_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _write_layout(tmp_path / "data", "paths", splits=(("test", 2),))
    (tmp_path / "outside.png").write_bytes(_png((1, 2, 3)))
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(root / "images" / "fifo.png")
    paths = ["images/test_0.png", "../outside.png", str(tmp_path / "outside.png"), "images/link.png",
             "https://example.com/x.png", "images/fifo.png", "images/missing.png"]
    pq.write_table(pa.table({"image": paths, "label": [0] * len(paths)}), root / "test-00000-of-00001.parquet")
    ds = load_split(str(root), "test")
    tf = make_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3))
    strict = ImageDataset(ds, tf, "image", "label", "test")
    assert strict[0][1] == 0
    for row, needle in [(1, "outside the dataset directory"), (2, "outside the dataset directory"),
                        (3, "outside the dataset directory"), (4, "is a URL"), (5, "is a named pipe"),
                        (6, "does not exist")]:
        with pytest.raises(BadInputError, match=f"split 'test' row {row}: image .*{needle}"):
            strict[row]
    x, y, rows, bad = collate([ImageDataset(ds, tf, "image", "label", "test", skip_bad=True)[i]
                               for i in range(len(paths))])
    assert rows.tolist() == [0] and [b.row for b in bad] == [1, 2, 3, 4, 5, 6]


def _bomb_png(side: int = 40_000) -> bytes:
    """A valid PNG of side x side 1-bit pixels (1.6 G pixels at 40000) in about 200 KB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    rows = (b"\0" * (1 + (side + 7) // 8)) * 1000
    idat = b"".join(comp.compress(rows) for _ in range(side // 1000)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bombs_and_non_images_stop_or_are_skipped_in_bounded_memory(tmp_path, monkeypatch):
    import resource

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    cells = [_png((0, 0, 0)), _bomb_png(40_000), b"%PDF-1.4 not an image", _bomb_png(10_000), _png((9, 9, 9))]
    datasets.Dataset.from_dict({"img": [{"bytes": c, "path": None} for c in cells], "label": [0] * 5},
                               features=feats).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    ds = load_split(str(tmp_path), "test")
    tf = make_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3))
    strict = ImageDataset(ds, tf, "img", "label", "test")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BadInputError, match=r"split 'test' row 1: image has 1,600,000,000 pixels, more than prune "
                                            r"decodes .*data.skip_bad"):
        strict[1]
    with pytest.raises(BadInputError, match="split 'test' row 2: image does not decode"):
        strict[2]
    with pytest.raises(BadInputError, match=r"split 'test' row 3: image .*100,000,000 pixels, more than prune decodes"):
        strict[3]  # below PIL's own error threshold (2x its warning threshold): prune's limit catches it
    x, y, rows, bad = collate([ImageDataset(ds, tf, "img", "label", "test", skip_bad=True)[i] for i in range(5)])
    assert rows.tolist() == [0, 4] and [b.row for b in bad] == [1, 2, 3]
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MB; decoding: 1.6 GB
    import prune.data

    monkeypatch.setattr(prune.data, "MAX_IMAGE_PIXELS", 50)  # the limit is prune's, whatever PIL's is
    with pytest.raises(BadInputError, match=r"split 'test' row 0: image is 8x8 = 64 pixels, more than prune decodes \(50\)"):
        strict[0]
