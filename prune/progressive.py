"""Layer-progressive pruning: score block t's units on the model whose blocks < t are already
pruned, remove block t's lowest-scoring units, go on to block t + 1.

This is the paper's layer-progressive locating (Algorithm 1: layer t's choice is made given the
choices of layers < t) turned into a pruner: the "path" kept in each layer is the set of units
that survive. A removed unit is a zero output, which is exactly what removing it structurally does
to the forward pass, so blocks < t are pruned by masking (`gates.unit_masks`) and the model is cut
structurally only once, by the prune stage, from the table this produces.
`tests/test_progressive.py` checks that against scoring each block on a model pruned for real.

Block scorers are the criteria's `score_block` (attribution with m steps or at alpha = 1, and
Torch-Pruning's Taylor on the masked model).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .budget import keep_mask
from .gates import unit_masks
from .units import Unit


def progressive_table(model: nn.Module, unit: Unit, score_block: Callable[[int], torch.Tensor], keep: list[int], *,
                      done: dict[int, torch.Tensor] | None = None,
                      on_block: Callable[[int, torch.Tensor], None] | None = None,
                      progress: bool = True) -> torch.Tensor:
    """Score block 0, keep its `keep[0]` best units, score block 1 with block 0 pruned, ... -> `[L, width]`.

    `score_block(t)` is called with blocks < t masked to their kept units and returns block t's
    scores `[width]` (higher = keep). `done` holds rows of an interrupted run (block -> scores), which
    are reused, so a resumed run continues with the same masks; `on_block(t, row)` is called after
    each new row (to checkpoint it). The prune stage later keeps, in each block, exactly the
    units these masks kept (`budget.kept_indices`).
    """
    done = dict(done or {})
    L = len(unit.widths(model))
    masks: list[torch.Tensor | None] = [None] * L
    rows = []
    for t in tqdm(range(L), desc="progressive", unit="block", disable=not progress):
        if t in done:
            row = done[t].double().cpu()
        else:
            with unit_masks(model, unit, masks):
                row = score_block(t).double().cpu()
            if on_block is not None:
                on_block(t, row)
        rows.append(row)
        masks[t] = keep_mask(row, keep[t])
    return torch.stack(rows)
