"""Structural pruning with Torch-Pruning, mean compensation, and pickle-free save/load.

Units are removed through their kind's Torch-Pruning group (`Unit.group`): every group is rooted
at the unit's own layer, so nothing outside the units' layers changes shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from .budget import PruneSettings, kept_counts, kept_indices
from .criteria import TableImportance, dependency_graph
from .errors import ConfigError
from .io import atomic_path, write_json
from .models import ModelSpec
from .units import FFN, Unit

FORMAT = "prune.PrunedViT/1"


def prune_units(model: nn.Module, unit: Unit, table: torch.Tensor, settings: PruneSettings,
                example_inputs: torch.Tensor, act_mean: torch.Tensor | None = None,
                keep: list[int] | None = None) -> list[list[int]]:
    """Remove the lowest-scoring units of one kind from `model` in place; return the kept indices per block.

    table: `[L, width]` scores (higher = keep), served through `TableImportance`. keep: units each
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
    importance = TableImportance(table, unit, model)
    graph = dependency_graph(model, example_inputs)
    kept_idx = []
    for l, k in enumerate(keep or kept_counts(table, widths, settings)):
        everything = list(range(widths[l]))
        scores = importance(unit.group(graph, model, l, everything))
        kept_idx.append(kept_indices(scores, k))
        removed = sorted(set(everything) - set(kept_idx[-1]))
        if not removed:
            continue
        if settings.compensate == "mean":
            unit.compensate(model, l, removed, act_mean[l])
        group = unit.group(graph, model, l, removed)
        if not graph.check_pruning_group(group):
            raise ConfigError(f"block {l}: Torch-Pruning refused to remove {len(removed)} of {widths[l]} {unit.kind} units")
        group.prune()
    return kept_idx


def prune_ffn(model: nn.Module, table: torch.Tensor, settings: PruneSettings, example_inputs: torch.Tensor,
              act_mean: torch.Tensor | None = None, keep: list[int] | None = None) -> list[list[int]]:
    """`prune_units` for FFN neurons."""
    return prune_units(model, FFN, table, settings, example_inputs, act_mean, keep)


def count_params_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Parameters and MACs of one forward (Torch-Pruning's counter)."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(params), int(macs)


# ------------------------------------------------------------------------------------ save / load
def save_pruned(model: nn.Module, out_dir: str | Path, spec: ModelSpec, kept: dict[str, list[list[int]]],
                dense_widths: dict[str, list[int]], data_config: dict | None = None,
                classes: list[int] | None = None) -> None:
    """`model.safetensors` + `structure.json` (base architecture, kwargs, kept units per kind and block, and for
    a class-specialised model `classes`: the original class id of each output)."""
    from safetensors.torch import save_file

    if set(kept) != {FFN.kind}:
        raise ConfigError(f"structure format {FORMAT} holds FFN neurons only, not {sorted(kept)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ffn_kept = kept[FFN.kind]
    widths = [len(k) for k in ffn_kept]
    embed_dim = int(model.embed_dim)
    structure = {
        "format": FORMAT, "architecture": spec.architecture, "model_kwargs": spec.model_kwargs,
        "embed_dim": embed_dim, "dense_widths": list(dense_widths[FFN.kind]), "widths": widths, "kept": ffn_kept,
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


def structure_kept(structure: dict) -> tuple[dict[str, list[list[int]]], dict[str, list[int]]]:
    """The kept units and dense widths of a `structure.json`, keyed by unit kind."""
    return {FFN.kind: structure["kept"]}, {FFN.kind: structure["dense_widths"]}


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a pruned model from `save_pruned`'s files, without unpickling anything."""
    import timm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    sfile = path / "structure.json"
    if not sfile.is_file():
        raise ConfigError(f"{path} is not a pruned-model directory (no structure.json)")
    try:
        structure = json.loads(sfile.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{sfile} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "rebuild it (rerun the recipe) or restore it") from None
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        got = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
        raise ConfigError(f"{sfile} has format {got!r}, expected {FORMAT}")
    try:
        model = timm.create_model(structure["architecture"], pretrained=False, **structure["model_kwargs"])
        FFN.resize(model, structure["widths"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{sfile} does not describe a model prune can rebuild ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]})") from None
    weights = path / "model.safetensors"
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0][:120]}); "
                          "it may be truncated: rebuild it (rerun the recipe) or restore it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((l.strip() for l in str(e).splitlines() if "size mismatch" in l or "Missing" in l),
                      str(e).splitlines()[0])
        raise ConfigError(f"{weights} does not fit {sfile.name}: {detail[:200]}") from None
    return model.eval(), structure
