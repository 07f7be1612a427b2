"""The prunable-unit protocol: what every kind of structural unit (FFN neuron, attention head, ...)
tells the rest of `prune`, so scoring, budgets, surgery and save/load never name a model's modules.

A unit kind lives in one file under `prune/units/` and implements this small class. Scores, kept
indices and widths are always keyed by `Unit.kind`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # typing only: the adapter is passed in, never imported at run time
    from ..models import ViTAdapter


class Unit:
    """One kind of prunable unit, `width(model, l)` of them in block l."""

    kind: str = ""

    def widths(self, model: nn.Module) -> list[int]:
        """How many units of this kind each block has now."""
        raise NotImplementedError

    def cost(self, model: nn.Module, tokens: int) -> list[int]:
        """MACs one unit of each block costs per image of `tokens` tokens (what removing it saves)."""
        raise NotImplementedError

    def gate(self, model: nn.Module, block: int) -> nn.Module:
        """The module whose output `[..., width]` carries block's units: a forward hook on it that
        multiplies by a `[width]` gate removes (0) or scales units, which attribution and masks use."""
        raise NotImplementedError

    def split(self, vit: "ViTAdapter", block: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run block from its input `x` up to the units: `(rest, h)`, `h` the units' output `[B, T, width]`."""
        raise NotImplementedError

    def join(self, vit: "ViTAdapter", block: int, rest: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Finish block from `split`'s `rest` and (possibly gated) units `h`."""
        raise NotImplementedError

    def parameters(self, model: nn.Module, block: int) -> list[nn.Parameter]:
        """The parameters that removing block's units shrinks (what a weight-gradient criterion needs)."""
        raise NotImplementedError

    def root(self, model: nn.Module, block: int) -> tuple[nn.Module, object]:
        """The module and Torch-Pruning pruning function that root block's group of units."""
        raise NotImplementedError

    def group(self, graph, model: nn.Module, block: int, idxs: list[int]):
        """Torch-Pruning's group that removes units `idxs` of block (with everything coupled to them)."""
        module, fn = self.root(model, block)
        return graph.get_pruning_group(module, fn, idxs=list(idxs))

    def compensate(self, model: nn.Module, block: int, removed: list[int], mean: torch.Tensor) -> None:
        """Fold the mean output of the `removed` units (`mean`: `[width]` over calibration tokens) into
        the next layer's bias, so a unit whose output is constant is removed exactly."""
        raise NotImplementedError

    def resize(self, model: nn.Module, widths: list[int]) -> None:
        """Give a freshly built (dense) model block widths `widths`, so a pruned state dict loads."""
        raise NotImplementedError
