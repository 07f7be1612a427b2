"""Torch-Pruning's dependency graph of a timm ViT: what surgery (`Unit.group`) and the Torch-Pruning
criteria both build their groups on."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .base import ConstantBranch


def unwrapped(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Bare parameters (CLS token, position embedding, an emptied branch's bias) live on the embedding axis,
    never pruned here."""
    bare = [p for n, p in model.named_parameters(recurse=False)]
    bare += [m.bias for m in model.modules() if isinstance(m, ConstantBranch)]
    return [(p, -1) for p in bare]


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of a timm ViT."""
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                 unwrapped_parameters=unwrapped(model))
