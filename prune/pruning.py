"""Structural pruning (surgery) with Torch-Pruning, and mean compensation. Saving and loading the
result is `prune.checkpoint`'s.

Units are removed through their kind's Torch-Pruning group (`Unit.group`): every group is rooted
at the unit's own layer, so nothing outside the units' layers changes shape.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .budget import PruneSettings, allocate_latency, allocate_macs, kept_counts, kept_indices
from .errors import ConfigError
from .units import FFN, Unit, dependency_graph


def prune_units(model: nn.Module, unit: Unit, table: torch.Tensor, settings: PruneSettings,
                example_inputs: torch.Tensor, act_mean: torch.Tensor | None = None,
                keep: list[int] | None = None) -> list[list[int]]:
    """Remove the lowest-scoring units of one kind from `model` in place; return the kept indices per block.

    table: `[L, width]` scores (higher = keep). keep: units each
    block keeps (default: `kept_counts` of the table; progressive scoring fixes them itself). act_mean:
    `[L, width]` mean unit output over calibration tokens, needed for `compensate="mean"`
    (`Unit.compensate`: exact for a unit whose output is constant).
    """
    if not 0 < settings.ratio < 1:
        raise ConfigError(f"prune.ratio must be in (0, 1), not {settings.ratio}")
    if settings.compensate not in ("none", "mean"):
        raise ConfigError(f"prune.compensate must be 'none' or 'mean', not {settings.compensate!r}")
    if settings.compensate == "mean" and act_mean is None:
        raise ConfigError("compensate='mean' needs the calibration activation means")
    widths = unit.widths(model)
    graph = dependency_graph(model, example_inputs)
    kept_idx, emptied = [], []
    for l, k in enumerate(keep if keep is not None else kept_counts(table, widths, settings)):
        everything = list(range(widths[l]))
        kept_idx.append(kept_indices(table[l, :widths[l]].double(), k) if k else [])
        removed = sorted(set(everything) - set(kept_idx[-1]))
        if not removed:
            continue
        if settings.compensate == "mean":
            unit.compensate(model, l, removed, act_mean[l])
        if k == 0:  # the branch becomes its bias, after every Torch-Pruning group (they share one graph)
            emptied.append(l)
            continue
        group = unit.group(graph, model, l, removed)
        if not graph.check_pruning_group(group):
            raise ConfigError(f"block {l}: Torch-Pruning refused to remove {len(removed)} of {widths[l]} {unit.kind} units")
        group.prune()
        unit.after_prune(model, l, k)
    for l in emptied:
        unit.empty(model, l)
    return kept_idx


def tokens(model: nn.Module) -> int:
    """Tokens every block sees: patches plus prefix (CLS, registers) tokens."""
    return int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))


def plan_keep(model: nn.Module, units: list[Unit], tables: dict[str, torch.Tensor], settings: PruneSettings,
              example_inputs: torch.Tensor, latency=None) -> dict[str, list[int]]:
    """Units each block keeps, per kind: `kept_counts` of each kind's table (`prune.ratio`), or with
    `macs_ratio` one ranking of every kind by score per MAC (`allocate_macs`) until that share of the
    dense model's MACs (`count_params_macs`) is removed, or with `latency_ratio` by score per millisecond
    on the measured `latency` table (`allocate_latency`)."""
    widths = {u.kind: u.widths(model) for u in units}
    if settings.latency_ratio is not None:
        if latency is None:
            raise ConfigError("prune.latency_ratio needs the measured latency table")
        return allocate_latency(tables, widths, latency, latency.dense_ms * (1 - settings.latency_ratio), settings)
    if settings.macs_ratio is None:
        return {u.kind: kept_counts(tables[u.kind], widths[u.kind], settings, u.kind) for u in units}
    costs = {u.kind: u.cost(model, tokens(model)) for u in units}
    _, dense = count_params_macs(model, example_inputs)
    return allocate_macs(tables, widths, costs, math.ceil(settings.macs_ratio * dense), settings, dense)


def check_budget(model: nn.Module, units: list[Unit], settings: PruneSettings, example_inputs: torch.Tensor,
                 latency=None) -> None:
    """Raise the one-line `ConfigError` `plan_keep` would raise, before any scoring: whether the target is
    reachable under the caps does not depend on the scores, so a table of zeros answers it."""
    zeros = {u.kind: torch.zeros(len(u.widths(model)), max(u.widths(model))) for u in units}
    plan_keep(model, units, zeros, settings, example_inputs, latency)


def prune_ffn(model: nn.Module, table: torch.Tensor, settings: PruneSettings, example_inputs: torch.Tensor,
              act_mean: torch.Tensor | None = None, keep: list[int] | None = None) -> list[list[int]]:
    """`prune_units` for FFN neurons."""
    return prune_units(model, FFN, table, settings, example_inputs, act_mean, keep)


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
