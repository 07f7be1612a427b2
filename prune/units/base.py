"""The prunable-unit protocol: what every kind of structural unit (FFN neuron, attention head, ...)
tells the rest of `prune`, so scoring, budgets, surgery and save/load never name a model's modules.

A unit kind lives in one file under `prune/units/` and implements this small abstract class (`Unit`:
its abstract methods are what a kind must say; a kind that misses one cannot be instantiated). Scores,
kept indices and widths are always keyed by `Unit.kind`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Protocol

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError


class ConstantBranch(nn.Module):
    """What a residual branch (attention or FFN) becomes when all its units are removed: its output
    with every gate at zero is its last layer's bias, whatever the input, so the block keeps only
    `x + bias` there. `dim` is the branch's output width."""

    def __init__(self, dim: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim) if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.bias.expand(*x.shape[:-1], self.bias.shape[0])


def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-block rows as one `[L, width]` table, padded with zeros to the widest block: blocks of a pruned
    model have different widths, and readers take `table[l, :widths[l]]`."""
    width = max((len(r) for r in rows), default=0)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


def is_empty(branch: nn.Module) -> bool:
    return isinstance(branch, ConstantBranch)


def fold_into_bias(layer: nn.Linear, columns: list[int], mean: torch.Tensor, what: str) -> None:
    """Add `layer`'s response to the constant input `mean` on `columns` to its bias: removing those input
    columns then leaves the output unchanged wherever they carried exactly their mean (compensation)."""
    if layer.bias is None:
        raise ConfigError(f"{what} has no bias to fold compensation into")
    idx = torch.as_tensor(columns)
    with torch.no_grad():
        shift = layer.weight[:, idx].double() @ mean[idx].to(layer.weight.device).double()
        layer.bias += shift.to(layer.bias.dtype)


class BlockRunner(Protocol):
    """What units use of `models.ViTAdapter` (a timm ViT run block by block), named here so that the units
    do not import the model module (which imports them)."""

    model: nn.Module
    blocks: list[nn.Module]

    def pre(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def pre_mlp(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def post(self, i: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor: ...


class Unit(ABC):
    """One kind of prunable unit, `width(model, l)` of them in block l."""

    kind: str = ""

    def channels(self, model: nn.Module, block: int) -> int:
        """Channels of the gate module's output per unit (1 for a neuron, head_dim for a head)."""
        return 1

    def expand(self, model: nn.Module, block: int, gate: torch.Tensor) -> torch.Tensor:
        """A `[..., width]` gate as the `[..., width * channels]` factor on the gate module's output."""
        c = self.channels(model, block)
        return gate if c == 1 else gate.repeat_interleave(c, dim=-1)

    @abstractmethod
    def widths(self, model: nn.Module) -> list[int]:
        """How many units of this kind each block has now."""
        ...

    @abstractmethod
    def cost(self, model: nn.Module, tokens: int) -> list[int]:
        """MACs one unit of each block costs per image of `tokens` tokens (what removing it saves)."""
        ...

    @abstractmethod
    def gate(self, model: nn.Module, block: int) -> nn.Module:
        """The module whose output `[..., width]` carries block's units: a forward hook on it that
        multiplies by a `[width]` gate removes (0) or scales units, which attribution and masks use."""
        ...

    @abstractmethod
    def split(self, vit: BlockRunner, block: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run block from its input `x` up to the units: `(rest, h)`, `h` the units' output `[B, T, width]`."""
        ...

    @abstractmethod
    def join(self, vit: BlockRunner, block: int, rest: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Finish block from `split`'s `rest` and (possibly gated) units `h`."""
        ...

    @abstractmethod
    def out_layer(self, model: nn.Module, block: int) -> nn.Linear:
        """The layer that reads block's units (their outputs are its input columns): what a re-fit solves."""
        ...

    @abstractmethod
    def out_input(self, vit: BlockRunner, block: int, x: torch.Tensor) -> torch.Tensor:
        """`out_layer`'s input `[B, T, width * channels]` when the branch of these units reads the stream `x`."""
        ...

    @abstractmethod
    def parameters(self, model: nn.Module, block: int) -> list[nn.Parameter]:
        """The parameters that removing block's units shrinks (what a weight-gradient criterion needs)."""
        ...

    @abstractmethod
    def root(self, model: nn.Module, block: int) -> tuple[nn.Module, Callable]:
        """The module and Torch-Pruning pruning function that root block's group of units."""
        ...

    def group(self, graph: tp.DependencyGraph, model: nn.Module, block: int, idxs: list[int]) -> tp.pruner.Group:
        """Torch-Pruning's group that removes units `idxs` of block (with everything coupled to them)."""
        module, fn = self.root(model, block)
        return graph.get_pruning_group(module, fn, idxs=list(idxs))

    def per_unit(self, model: nn.Module, block: int, scores: torch.Tensor) -> torch.Tensor:
        """A Torch-Pruning importance of block's whole group (one score per root channel) as one per unit."""
        return scores

    def after_prune(self, model: nn.Module, block: int, kept: int) -> None:
        """Update module attributes after Torch-Pruning left `kept` units in block (e.g. a head count)."""

    @abstractmethod
    def compensate(self, model: nn.Module, block: int, removed: list[int], mean: torch.Tensor) -> None:
        """Fold the mean output of the `removed` units (`mean`: `[width * channels]`, the gate module's
        mean output over calibration tokens) into
        the next layer's bias, so a unit whose output is constant is removed exactly."""
        ...

    @abstractmethod
    def empty(self, model: nn.Module, block: int) -> None:
        """Replace block's branch of these units by `ConstantBranch` (the branch with every gate at zero)."""
        ...

    @abstractmethod
    def resize(self, model: nn.Module, widths: list[int]) -> None:
        """Give a freshly built (dense) model block widths `widths` (0: an emptied branch), so a pruned
        state dict loads."""
        ...
