"""What a unit costs: the dense model's cost, and what removing one unit of a kind from a block saves at
the block's current width. `allocate` ranks units by score per unit of saving, so a new cost (energy,
memory, a latency table of another runtime) is one `CostModel` here.

`MacsCost`: multiply-accumulates, counted by `count_params_macs`; a unit's saving is its kind's
`Unit.cost`, the same at any width. `LatencyCost`: milliseconds on a measured `latency.LatencyTable`
(measured by `prune/latency.py`); a unit's saving is the table's step at the block's current width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class CostModel(ABC):
    """A budget's currency: the dense cost and each unit's saving."""

    name: str = ""  # what the cost counts: "macs", "ms"

    @abstractmethod
    def dense(self) -> float:
        """The dense model's cost."""

    @abstractmethod
    def saving(self, kind: str, block: int, width: int) -> float:
        """What removing one `kind` unit from `block`, which keeps `width` of them, saves."""


class MacsCost(CostModel):
    """Multiply-accumulates of one image (`count_params_macs`); every unit of a kind in a block saves the
    same (`Unit.cost` at the model's token count), whatever the width."""

    name = "macs"

    def __init__(self, model: nn.Module, units: list, example_inputs: torch.Tensor):
        self.model, self.example_inputs = model, example_inputs
        t = tokens(model)
        self.per_unit: dict[str, list[int]] = {u.kind: u.cost(model, t) for u in units}
        self._dense: int | None = None

    def dense(self) -> int:
        if self._dense is None:
            self._dense = count_params_macs(self.model, self.example_inputs)[1]
        return self._dense

    def saving(self, kind: str, block: int, width: int) -> int:
        return self.per_unit[kind][block]


class LatencyCost(CostModel):
    """Milliseconds on a measured latency table (`latency.LatencyTable`): removing a unit saves the
    table's step from `width` to `width - 1` (to 0: the branch becomes its bias)."""

    name = "ms"

    def __init__(self, table):
        self.table = table

    def dense(self) -> float:
        return self.table.dense_ms

    def saving(self, kind: str, block: int, width: int) -> float:
        return self.table.branch(kind, width) - self.table.branch(kind, width - 1)

    def predict(self, widths: dict[str, list[int]]) -> float:
        """The predicted latency of a model with these per-block widths (kinds not given stay dense)."""
        return self.table.predict(widths)


def tokens(model: nn.Module) -> int:
    """Tokens every block sees: patches plus prefix (CLS, registers) tokens."""
    return int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))


def count_params_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward of `example_inputs`: every Linear and Conv2d, and
    the attention matmuls (q k^T and attn v, tokens^2 x heads x head_dim each) of every module with `qkv`
    and `num_heads`; element-wise work (norms, activations, softmax) is not counted. Exact per unit:
    an FFN neuron costs tokens x (in + out), a head tokens x head_dim x (4 x dim + 2 x tokens)
    (`Unit.cost`). Torch-Pruning's counter is not used because it counts a head-pruned timm attention's
    output projection as square."""
    macs = [0]

    def linear(mod, inp, out):
        macs[0] += inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    def conv(mod, inp, out):
        k = mod.weight[0].numel()  # in_channels / groups x kernel area
        macs[0] += out.numel() * k

    def attention(mod, inp, out):
        x = inp[0]
        macs[0] += 2 * x.numel() // x.shape[-1] * x.shape[-2] * mod.num_heads * mod.head_dim

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            hooks.append(m.register_forward_hook(attention))
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for p in model.parameters()), int(macs[0])
