"""Structural pruning with Torch-Pruning, mean compensation, and pickle-free save/load.

Units are removed through their kind's Torch-Pruning group (`Unit.group`): every group is rooted
at the unit's own layer, so nothing outside the units' layers changes shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .budget import PruneSettings, allocate_latency, allocate_macs, kept_counts, kept_indices
from .card import ModelCard, base_model_facts
from .card import write as write_card
from .criteria import dependency_graph
from .errors import ConfigError
from .io import atomic_path, load_safetensors, read_text, write_json
from .models import ModelSpec
from .units import FFN, UNITS, Unit

FORMAT = "prune.PrunedViT/2"  # kept units per kind; /1 (FFN neurons only) still loads
FORMATS = ("prune.PrunedViT/1", FORMAT)


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


# ------------------------------------------------------------------------------------ save / load
def save_pruned(model: nn.Module, out_dir: str | Path, spec: ModelSpec, kept: dict[str, list[list[int]]],
                dense_widths: dict[str, list[int]], data_config: dict | None = None,
                classes: list[int] | None = None, *, label_names: list[str] | None = None,
                card: ModelCard | None = None) -> None:
    """`model.safetensors` + `structure.json` (base architecture, kwargs, per unit kind the dense widths, the
    widths and kept unit indices of every block (width 0: the branch is its bias), and for a
    class-specialised model `classes`: the original class id of each output) + `config.json` (timm's
    `local-dir:` format for prune's architecture `prune_vit`, with the preprocessing and `label_names`, the
    name of each output) + `README.md` (the model card: `card`, what the caller knows, and the counts)."""
    from safetensors.torch import save_file

    from . import __version__
    from .timm_model import model_args, timm_config

    unknown = sorted(set(kept) - set(UNITS))
    if unknown:
        raise ConfigError(f"unknown unit kinds {unknown}; structure format {FORMAT} knows {', '.join(UNITS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    embed_dim = int(model.embed_dim)
    units = {kind: {"dense_widths": list(dense_widths[kind]), "widths": [len(k) for k in idx], "kept": idx}
             for kind, idx in kept.items()}
    structure = {"format": FORMAT, "architecture": spec.architecture, "model_kwargs": spec.model_kwargs,
                 "embed_dim": embed_dim, "units": units, "data_config": data_config or {}}
    if classes is not None:
        structure["classes"] = list(classes)
    ffn = units.get(FFN.kind, {}).get("widths")
    heads_untouched = all(u["widths"] == u["dense_widths"] for k, u in units.items() if k != FFN.kind)
    plain = spec.architecture != "prune_vit"  # a pruned model pruned again: its base is no plain timm model
    if plain and ffn and heads_untouched and len(set(ffn)) == 1 and ffn[0] and int(embed_dim * (ffn[0] / embed_dim)) == ffn[0]:
        structure["timm_mlp_ratio"] = ffn[0] / embed_dim  # uniform FFN, nothing else pruned: plain timm rebuilds it
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out / "structure.json", structure)
    num_classes = int(getattr(model, "num_classes", 0))
    if label_names is not None and len(label_names) != num_classes:
        label_names = None  # names that do not match the outputs name nothing
    extra = {"prune": {"version": __version__, "structure": "structure.json",
                       **({"classes": list(classes)} if classes is not None else {})}}
    args = model_args(spec.architecture, spec.model_kwargs, {k: u["widths"] for k, u in units.items()})
    preprocessing = {**_timm_data_config(model), **(data_config or {})}
    config = timm_config(args, preprocessing, num_classes, int(getattr(model, "num_features", embed_dim)),
                         label_names, base_model_facts(card.base_model)[1] if card else None, extra)
    write_json(out / "config.json", config)
    write_model_card(out, model, card)


def _timm_data_config(model: nn.Module) -> dict:
    """timm's preprocessing for `model` at the input size it was built for (what a data config that was
    not given, or given in part, lacks)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return {"input_size": [int(cfg["input_size"][0]), *(size or cfg["input_size"][1:])], "mean": list(cfg["mean"]),
            "std": list(cfg["std"]), "interpolation": cfg.get("interpolation", "bicubic"),
            "crop_pct": float(cfg.get("crop_pct", 1.0))}


def write_model_card(path: str | Path, model: nn.Module, card: ModelCard | None = None) -> None:
    """(Re)write the model card (`README.md`) of a pruned-model directory from its `structure.json` and
    `config.json`, the parameters and MACs of `model` (the directory's model) and `card`; stages call it
    again once they have measured the saved model's accuracy."""
    path = Path(path)
    structure = json.loads(read_text(path / "structure.json", "structure file"))
    config = json.loads(read_text(path / "config.json", "model config"))
    param = next(model.parameters())
    example = torch.zeros(1, *config["pretrained_cfg"]["input_size"], dtype=param.dtype, device=param.device)
    params, macs = count_params_macs(model, example)
    write_card(path, {**structure, "units": structure_units(structure)}, config, params, macs, card)


def structure_units(structure: dict) -> dict[str, dict]:
    """`{kind: {"dense_widths", "widths", "kept"}}` of a `structure.json` of either format."""
    if structure.get("format") == FORMATS[0]:  # v1: FFN neurons only, at the top level
        return {FFN.kind: {k: structure[k] for k in ("dense_widths", "widths", "kept")}}
    return structure["units"]


def structure_kept(structure: dict) -> tuple[dict[str, list[list[int]]], dict[str, list[int]]]:
    """The kept units and dense widths of a `structure.json`, keyed by unit kind."""
    units = structure_units(structure)
    return {k: u["kept"] for k, u in units.items()}, {k: u["dense_widths"] for k, u in units.items()}


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a pruned model from `save_pruned`'s files, without unpickling anything."""
    import timm

    from . import timm_model  # noqa: F401  (a model pruned again is built from a prune_vit)

    path = Path(path)
    sfile = path / "structure.json"
    if not (sfile.exists() or sfile.is_symlink()):
        raise ConfigError(f"{path} is not a pruned-model directory (no structure.json)")
    try:
        structure = json.loads(read_text(sfile, "structure file"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{sfile} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "rebuild it (rerun the recipe) or restore it") from None
    if not isinstance(structure, dict) or structure.get("format") not in FORMATS:
        got = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
        raise ConfigError(f"{sfile} has format {got!r}, expected one of {', '.join(FORMATS)}")
    try:
        model = timm.create_model(structure["architecture"], pretrained=False, **structure["model_kwargs"])
        for kind, u in structure_units(structure).items():
            UNITS[kind].resize(model, u["widths"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{sfile} does not describe a model prune can rebuild ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]})") from None
    weights = path / "model.safetensors"
    state = load_safetensors(weights, "; it may be truncated: rebuild it (rerun the recipe) or restore it")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((l.strip() for l in str(e).splitlines() if "size mismatch" in l or "Missing" in l),
                      str(e).splitlines()[0])
        raise ConfigError(f"{weights} does not fit {sfile.name}: {detail[:200]}") from None
    return model.eval(), structure
