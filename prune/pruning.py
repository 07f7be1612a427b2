"""FFN-only structural pruning with Torch-Pruning, mean compensation, and pickle-free save/load.

Only FFN hidden channels go (fc1 outputs, the activation, fc2 inputs): every other Linear and the
patch embedding are `ignored_layers`, so Torch-Pruning's dependency graph forms exactly one group
per block, rooted at fc1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from .errors import ConfigError
from .importance import TableImportance
from .io import atomic_path, write_json
from .models import ModelSpec

FORMAT = "prune.PrunedViT/1"


@dataclass
class PruneSettings:
    ratio: float = 0.5  # fraction of FFN neurons removed
    scope: str = "uniform"  # "uniform": the same ratio in every block; "global": one ranking across blocks
    max_layer_ratio: float = 0.9  # global: no block loses more than this fraction
    round_to: int | None = None  # kept widths are multiples of this
    compensate: str = "none"  # "mean": fold removed neurons' mean activation into fc2's bias


def unwrapped(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Bare parameters (CLS token, position embedding) live on the embedding axis, never pruned here."""
    return [(p, -1) for n, p in model.named_parameters(recurse=False)]


def ffn_only_ignored(model: nn.Module) -> list[nn.Module]:
    fc1s = {id(b.mlp.fc1) for b in model.blocks}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in fc1s]
    return ignored + [model.patch_embed]


def kept_counts(table: torch.Tensor, widths: list[int], settings: PruneSettings) -> list[int]:
    """How many neurons each block keeps.

    uniform: round(D * (1 - ratio)) per block. global: the lowest-scoring neurons across all blocks
    go first until `ratio` of all neurons are gone, but no block loses more than `max_layer_ratio`
    (Torch-Pruning's one-shot global mode does not enforce that cap, so the allocation is done
    here and the removal by its dependency graph). `round_to` rounds each kept width up.
    """
    if settings.scope == "uniform":
        kept = [max(1, round(w * (1 - settings.ratio))) for w in widths]
    elif settings.scope == "global":
        floor = [max(1, math.ceil(w * (1 - settings.max_layer_ratio) - 1e-9)) for w in widths]
        to_remove = round(sum(widths) * settings.ratio)
        if to_remove > sum(widths) - sum(floor):
            raise ConfigError(f"prune.ratio {settings.ratio} is unreachable with prune.max_layer_ratio "
                              f"{settings.max_layer_ratio}: raise max_layer_ratio to at least the ratio")
        kept = list(widths)
        order = torch.cat([table[l, :w].double() for l, w in enumerate(widths)]).argsort(stable=True)
        layer_of = torch.cat([torch.full((w,), l) for l, w in enumerate(widths)])
        for i in order.tolist():
            if to_remove == 0:
                break
            l = int(layer_of[i])
            if kept[l] > floor[l]:
                kept[l] -= 1
                to_remove -= 1
    else:
        raise ConfigError(f"prune.scope must be 'uniform' or 'global', not {settings.scope!r}")
    if settings.round_to:
        r = settings.round_to
        kept = [min(w, math.ceil(k / r) * r) for k, w in zip(kept, widths)]
    return kept


def kept_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """The `keep` highest-scoring entries of one block's scores, ascending; ties go to the higher index
    (stable ascending sort, the last `keep` survive). Progressive scoring masks with the same rule."""
    order = scores.double().argsort(stable=True)
    return sorted(order[len(order) - keep:].tolist())


def prune_ffn(model: nn.Module, table: torch.Tensor, settings: PruneSettings, example_inputs: torch.Tensor,
              act_mean: torch.Tensor | None = None, keep: list[int] | None = None) -> list[list[int]]:
    """Remove the lowest-scoring FFN neurons of `model` in place; return the kept indices per block.

    table: `[L, D]` scores (higher = keep), served through `TableImportance`. keep: neurons each
    block keeps (default: `kept_counts` of the table; progressive scoring fixes them itself). act_mean: `[L, D]`
    mean activation over calibration tokens, needed for `compensate="mean"`:
    fc2.bias += fc2.weight[:, removed] @ act_mean[removed], exact for a neuron whose activation is
    constant.
    """
    if not 0 < settings.ratio < 1:
        raise ConfigError(f"prune.ratio must be in (0, 1), not {settings.ratio}")
    if settings.compensate not in ("none", "mean"):
        raise ConfigError(f"prune.compensate must be 'none' or 'mean', not {settings.compensate!r}")
    if settings.compensate == "mean" and act_mean is None:
        raise ConfigError("compensate='mean' needs the calibration activation means")
    blocks = list(model.blocks)
    fc1s = [b.mlp.fc1 for b in blocks]
    widths = [f.out_features for f in fc1s]
    importance = TableImportance(table, fc1s)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                  unwrapped_parameters=unwrapped(model))
    kept_idx = []
    for l, (fc1, k) in enumerate(zip(fc1s, keep or kept_counts(table, widths, settings))):
        everything = list(range(widths[l]))
        scores = importance(graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=everything))
        kept_idx.append(kept_indices(scores, k))
        removed = sorted(set(everything) - set(kept_idx[-1]))
        if not removed:
            continue
        if settings.compensate == "mean":
            fc2 = blocks[l].mlp.fc2
            if fc2.bias is None:
                raise ConfigError(f"block {l}: fc2 has no bias to fold compensation into")
            idx = torch.tensor(removed)
            with torch.no_grad():
                shift = fc2.weight[:, idx].double() @ act_mean[l, idx].to(fc2.weight.device).double()
                fc2.bias += shift.to(fc2.bias.dtype)
        group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=removed)
        if not graph.check_pruning_group(group):
            raise ConfigError(f"block {l}: Torch-Pruning refused to remove {len(removed)} of {widths[l]} neurons")
        group.prune()
    return kept_idx


def count_params_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Parameters and MACs of one forward (Torch-Pruning's counter)."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(params), int(macs)


# ------------------------------------------------------------------------------------ save / load
def save_pruned(model: nn.Module, out_dir: str | Path, spec: ModelSpec, kept: list[list[int]],
                dense_widths: list[int], data_config: dict | None = None, classes: list[int] | None = None) -> None:
    """`model.safetensors` + `structure.json` (base architecture, kwargs, kept channels per block, and for a
    class-specialised model `classes`: the original class id of each output)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    widths = [len(k) for k in kept]
    embed_dim = model.blocks[0].mlp.fc1.in_features
    structure = {
        "format": FORMAT, "architecture": spec.architecture, "model_kwargs": spec.model_kwargs,
        "embed_dim": embed_dim, "dense_widths": list(dense_widths), "widths": widths, "kept": kept,
        "data_config": data_config or {},
    }
    if classes is not None:
        structure["classes"] = list(classes)
    if len(set(widths)) == 1 and int(embed_dim * (widths[0] / embed_dim)) == widths[0]:
        structure["timm_mlp_ratio"] = widths[0] / embed_dim  # uniform: plain timm can rebuild it
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out / "structure.json", structure)


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a pruned model from `save_pruned`'s files, without unpickling anything."""
    import timm
    from safetensors.torch import load_file

    path = Path(path)
    sfile = path / "structure.json"
    if not sfile.is_file():
        raise ConfigError(f"{path} is not a pruned-model directory (no structure.json)")
    structure = json.loads(sfile.read_text())
    if structure.get("format") != FORMAT:
        raise ConfigError(f"{sfile} has format {structure.get('format')!r}, expected {FORMAT}")
    model = timm.create_model(structure["architecture"], pretrained=False, **structure["model_kwargs"])
    for block, width in zip(model.blocks, structure["widths"]):
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        block.mlp.fc1 = nn.Linear(fc1.in_features, width, bias=fc1.bias is not None)
        block.mlp.fc2 = nn.Linear(width, fc2.out_features, bias=fc2.bias is not None)
    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    return model.eval(), structure
