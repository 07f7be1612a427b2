"""What the benchmark scripts share: a split's images as tensors (through `prune.data`, the path the stages
and commands load images by), top-1 of a model on them, and CSV files of result rows (appended row by row,
or written whole). Scripts import it as `common` (they run from this directory: `python benchmarks/x.py`)."""

from __future__ import annotations

import csv
import random
from contextlib import contextmanager
from pathlib import Path

import torch


def split_images(source: str, split: str, data_cfg, num_classes: int | None, n: int | None = None, seed: int = 0,
                 exclude=()) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` rows of a split drawn with `seed` (all of them if None or more than there are, less `exclude`),
    prepared for the model (`data_cfg`: its timm data config) as one image tensor and its labels."""
    from prune.data import open_split, stack_rows

    data = open_split(source, split)
    gone = set(exclude)
    rows = [i for i in range(len(data.ds)) if i not in gone]
    if n is not None and n < len(rows):
        rows = sorted(random.Random(seed).sample(rows, n))
    return stack_rows(data, data_cfg, rows, num_classes)


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> float:
    """Share of `x` whose top prediction is its label `y`, `chunk` images at a time."""
    return sum((model(x[s:s + chunk]).argmax(-1) == y[s:s + chunk]).sum().item()
               for s in range(0, len(y), chunk)) / len(y)


@contextmanager
def appending_csv(path: Path, fields: list[str]):
    """`append(row)`: one row appended to the CSV file `path` (its header written when the file is new) and
    flushed at once, so a long sweep that stops keeps the rows it measured."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new and path.read_text().split("\n", 1)[0].split(",") != list(fields):
        raise SystemExit(f"{path} has other columns (an older version of the script); give a new --csv")
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()

        def append(row: dict) -> None:
            w.writerow(row)
            f.flush()

        yield append


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """`rows` as a whole CSV file, replaced atomically; columns `fields` (default: every key, in first-seen order)."""
    from prune.io import atomic_path

    fields = fields if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
