"""Per-class neuron statistics accumulated from many images' paths; saved as safetensors, mergeable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ConfigError
from ..io import atomic_path, check_safetensors
from .locate import PathResult

FORMAT = "prune.PathStats/1"
_TENSORS = ("counts", "freq", "score_sum", "score_norm_sum", "jas_sum")


@dataclass
class PathStats:
    """What the paths of many images say about each class's neurons.

    counts `[C]`: images seen per class (grouped by the image's label).
    freq `[C, L, D]`: how many of the class's images have neuron (l, d) on their top-K path.
    score_sum `[C, L, D]`: the method's dense candidate scores (JA_t for "jas"), summed.
    score_norm_sum `[C, L, D]`: the same with each image's `[L, D]` scores divided by their L1 norm
        first, so every image contributes equally whatever its probability scale.
    jas_sum `[C]`: summed JAS of the images' paths.
    """

    counts: torch.Tensor
    freq: torch.Tensor
    score_sum: torch.Tensor
    score_norm_sum: torch.Tensor
    jas_sum: torch.Tensor
    settings: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, num_classes: int, depth: int, width: int, settings: dict | None = None) -> "PathStats":
        # 32-bit [C, L, D] tables: ImageNet x ViT-B is 1000 x 12 x 3072, about 150 MB each
        z = lambda *s, d=torch.float32: torch.zeros(*s, dtype=d)  # noqa: E731
        return cls(z(num_classes, d=torch.int64), z(num_classes, depth, width, d=torch.int32),
                   z(num_classes, depth, width), z(num_classes, depth, width), z(num_classes, d=torch.float64),
                   dict(settings or {}))

    @property
    def num_classes(self) -> int:
        return self.counts.shape[0]

    @property
    def top_k(self) -> int:
        return int(self.settings.get("top_k", 1))

    def update(self, result: PathResult) -> "PathStats":
        """Add the images of `result` (grouped by their labels)."""
        y = result.labels.long()
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise ConfigError(f"label {int(y.max())} is outside the {self.num_classes} classes of these stats")
        n, L, K = result.neurons.shape
        self.counts.index_add_(0, y, torch.ones_like(y))
        on_path = torch.zeros(n, L, self.freq.shape[2], dtype=self.freq.dtype)
        on_path.scatter_(-1, result.neurons, 1)
        self.freq.index_add_(0, y, on_path)
        self.jas_sum.index_add_(0, y, result.scores.double())
        if result.candidate_scores is not None:
            c = result.candidate_scores.double()
            self.score_sum.index_add_(0, y, c.to(self.score_sum.dtype))
            norm = c.abs().sum((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
            self.score_norm_sum.index_add_(0, y, (c / norm).to(self.score_norm_sum.dtype))
        return self

    def merge(self, *others: "PathStats") -> "PathStats":
        """Sum of these stats and `others` (shards of one discovery run, e.g. one per process)."""
        out = PathStats(*(getattr(self, k).clone() for k in _TENSORS), dict(self.settings))
        same = ("method", "steps", "top_k", "scope", "target", "model")  # seeds and batch sizes may differ
        for o in others:
            if any(o.settings.get(k) != self.settings.get(k) for k in same) or o.freq.shape != self.freq.shape:
                raise ConfigError("cannot merge path stats from different settings or models: "
                                  f"{o.settings} {tuple(o.freq.shape)} vs {self.settings} {tuple(self.freq.shape)}")
            for k in _TENSORS:
                getattr(out, k).add_(getattr(o, k))
        return out

    def select(self, classes: list[int]) -> "PathStats":
        """The statistics of `classes` only, re-indexed 0..k-1 in that order (class specialisation)."""
        idx = torch.as_tensor(classes, dtype=torch.long)
        return PathStats(*(getattr(self, k)[idx].clone() for k in _TENSORS),
                         settings={**self.settings, "classes": list(classes)})

    def reduce(self) -> "PathStats":
        """Sum across the processes of an `accelerate launch` run (every process gets the total)."""
        from .. import dist

        return PathStats(**{k: dist.reduce_sum(getattr(self, k)) for k in _TENSORS}, settings=dict(self.settings))

    def preferred_path(self, c: int, k: int | None = None) -> torch.Tensor:
        """The class's modal path `[L, k]`: most frequent neurons per layer, ties broken by summed score."""
        k = k or self.top_k
        order = self.score_sum[c].argsort(dim=-1, descending=True, stable=True)
        by_freq = self.freq[c].gather(-1, order).argsort(dim=-1, descending=True, stable=True)
        return order.gather(-1, by_freq)[:, :k]

    def save(self, path: str | Path) -> None:
        meta = {"format": FORMAT, "settings": json.dumps(self.settings, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file({k: getattr(self, k).contiguous() for k in _TENSORS}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "PathStats":
        with safe_open(str(check_safetensors(path)), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ConfigError(f"{path} is not a prune path-stats file (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in _TENSORS}
        return cls(**tensors, settings=json.loads(meta["settings"]))
