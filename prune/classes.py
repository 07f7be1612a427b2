"""Class specialisation (`prune.classes`): a model that predicts only the classes a deployment needs.

The dense model's head keeps only those classes' rows, re-indexed 0..k-1 in the order given; the
original id of every new class is recorded (`structure.json` `classes`, ONNX metadata) so outputs
can be mapped back. Data for such a run holds only those classes' images with labels re-indexed the
same way, so every stage (scoring, pruning, evaluation, fine-tuning) runs unchanged on a k-class
problem, and "dense" means the dense model restricted to those classes' logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError


def class_names(ds, label_column: str) -> list[str] | None:
    """The names of a dataset's `ClassLabel` column, else None."""
    import datasets

    feature = ds.features.get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def resolve_classes(spec: list, num_classes: int, names: list[str] | None, key: str = "prune.classes") -> list[int]:
    """Class indices (ints or index strings) or names -> original class ids, validated."""
    if not spec:
        raise ConfigError(f"{key} is empty; give the classes to keep as indices (0..{num_classes - 1}) or names")
    ids = []
    for c in spec:
        if isinstance(c, bool):
            raise ConfigError(f"{key}: {c!r} is not a class index or name")
        if isinstance(c, int) or (isinstance(c, str) and c.strip().lstrip("-").isdigit() and
                                  not (names and c.strip() in names)):
            i = int(c)
            if not 0 <= i < num_classes:
                raise ConfigError(f"{key}: class index {i} is outside the model's {num_classes} classes (0..{num_classes - 1})")
        elif isinstance(c, str):
            if not names:
                raise ConfigError(f"{key}: class name {c!r} needs a dataset whose label column is a ClassLabel "
                                  "with names; give class indices instead")
            if c.strip() not in names:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise ConfigError(f"{key}: unknown class name {c!r}; the dataset's classes are {shown}")
            i = names.index(c.strip())
            if i >= num_classes:
                raise ConfigError(f"{key}: class {c!r} (index {i}) is outside the model's {num_classes} classes")
        else:
            raise ConfigError(f"{key}: {c!r} is not a class index or name")
        if i in ids:
            raise ConfigError(f"{key}: class {c!r} is listed twice")
        ids.append(i)
    if len(ids) == num_classes and ids == list(range(num_classes)):
        raise ConfigError(f"{key} lists every class in order; leave it out for a class-agnostic model")
    return ids


@torch.no_grad()
def restrict_head(model: nn.Module, classes: list[int]) -> nn.Module:
    """Keep only `classes`' rows of the classifier (in that order), in place: logits become `[B, k]`."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no linear classifier head to restrict to prune.classes")
    idx = torch.as_tensor(classes, device=head.weight.device)
    new = nn.Linear(head.in_features, len(classes), bias=head.bias is not None,
                    device=head.weight.device, dtype=head.weight.dtype)
    new.weight.copy_(head.weight[idx])
    if head.bias is not None:
        new.bias.copy_(head.bias[idx])
    model.head = new
    model.num_classes = len(classes)
    return model
