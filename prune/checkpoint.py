"""Every on-disk model format prune writes and reads, in one module.

- A **pruned-model directory** (`save_pruned` / `load_pruned`): `model.safetensors` (the state dict),
  `structure.json` (prune's description: base architecture, per unit kind the dense and kept widths and
  the kept unit indices), `config.json` (timm's `local-dir:` format for the `prune_vit` architecture) and
  `README.md` (the model card).
- A **model directory** (`read_model_config`, `load_model_weights`, `write_model_dir`): `config.json`
  (prune's `architecture` + `model_kwargs` + preprocessing, or timm's `model_args` + `pretrained_cfg`)
  and `model.safetensors`, what a recipe's `model.name` takes and `prune convert` writes.
- A **state dict** on its own (`write_state`), e.g. the fine-tuning loop's best weights.

Nothing here unpickles anything. Other modules name these files through the constants below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .card import ModelCard
from .card import write as write_card
from .errors import ConfigError
from .io import atomic_path, load_safetensors, read_text, write_json
from .budget.costs import count_params_macs
from .units import FFN, UNITS

STRUCTURE_FILE = "structure.json"  # a pruned-model directory's own description
WEIGHTS_FILE = "model.safetensors"  # the state dict, in every model directory
CONFIG_FILE = "config.json"  # a model directory's architecture and preprocessing
FORMAT = "prune.PrunedViT/2"  # kept units per kind; /1 (FFN neurons only) still loads
FORMATS = ("prune.PrunedViT/1", FORMAT)

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_MODELS = {"digits-vit": ASSETS / "digits_vit"}


@dataclass
class ModelSpec:
    """What is needed to rebuild a model without pickle: timm name + kwargs (+ weights file)."""

    architecture: str
    model_kwargs: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ model directories
def resolve_model_dir(spec: str) -> Path | None:
    """Return the local directory a spec names (embedded name or existing dir), else None."""
    if spec in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    return None


def is_pruned_dir(path: str | Path) -> bool:
    """Whether `path` is a pruned-model directory (it has a `structure.json`)."""
    return (Path(path) / STRUCTURE_FILE).is_file()


def _present(path: Path) -> bool:
    """Whether a directory entry exists at `path` (a file, a dangling link, a device...)."""
    return path.exists() or path.is_symlink()


def read_model_config(local: Path) -> dict:
    """A model directory's `config.json` in prune's format (`architecture`, `model_kwargs`, optional
    `mean`, `std`, `interpolation`, `crop_pct`); timm's format is translated. Every failure is a ConfigError."""
    cfg_file = local / CONFIG_FILE
    if not _present(cfg_file):
        raise ConfigError(f"model directory {local} has no config.json; it needs config.json "
                          "(architecture, model_kwargs) and model.safetensors")
    try:
        cfg = json.loads(read_text(cfg_file, "model config"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{cfg_file} is not readable JSON ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "it must hold architecture, model_kwargs and optionally mean/std") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise ConfigError(f"{cfg_file} has no 'architecture' key naming the timm model")
    cfg = _prune_format(cfg)
    if not isinstance(cfg.get("model_kwargs", {}), dict):
        raise ConfigError(f"{cfg_file}: model_kwargs must be a mapping of timm.create_model arguments")
    return cfg


def _prune_format(cfg: dict) -> dict:
    """A `config.json` in timm's format (`model_args`, preprocessing in `pretrained_cfg`: what timm's
    `save_for_hf` and prune's pruned-model directories write) as prune's (`model_kwargs`, `mean`, `std`,
    `interpolation`, `crop_pct` at the top); prune's own format unchanged."""
    if "model_kwargs" in cfg or "model_args" not in cfg:
        return cfg
    pcfg = cfg.get("pretrained_cfg") if isinstance(cfg.get("pretrained_cfg"), dict) else {}
    out = {k: pcfg[k] for k in ("mean", "std", "interpolation", "crop_pct") if pcfg.get(k) is not None}
    return {**out, **cfg, "model_kwargs": cfg["model_args"]}


def load_model_weights(model: nn.Module, local: Path, what: str, pretrained: bool) -> None:
    """Load a model directory's `model.safetensors` into `model`; without one, random weights are kept
    only when `pretrained` is false."""
    weights = local / WEIGHTS_FILE
    if _present(weights):  # a link to a device or a pipe is refused by the reader, not taken as absent
        load_weights(model, weights, what)
    elif pretrained:
        raise ConfigError(f"model directory {local} has no model.safetensors "
                          "(set pretrained=false to use random weights)")


def load_weights(model: nn.Module, weights: Path, what: str) -> None:
    """Load a safetensors file into `model`; a corrupt file or one that does not fit is a ConfigError."""
    state = load_safetensors(weights)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        detail = next((l.strip() for l in str(e).splitlines() if "size mismatch" in l), str(e).splitlines()[0])
        raise ConfigError(f"{weights} does not fit {what}: {detail}") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match {what}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def write_state(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """A state dict as one safetensors file, written atomically (contiguous tensors, no pickle)."""
    from safetensors.torch import save_file

    with atomic_path(Path(path)) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))


def write_model_dir(out: str | Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """A model directory: `model.safetensors` (`state`) and `config.json` (`config`, prune's format)."""
    out = Path(out)
    write_state(out / WEIGHTS_FILE, state)
    write_json(out / CONFIG_FILE, config)


def base_model_facts(name: str | None) -> tuple[str | None, str | None]:
    """`(hub id, license)` of a base model: a timm name's pretrained config (`timm/<name>.<tag>` and its
    license), or a model directory's `config.json` keys `hf_hub_id` / `base_model` and `license`
    (also inside its `pretrained_cfg`); `(None, None)` where unknown."""
    if not name:
        return None, None
    local = resolve_model_dir(name)
    if local is not None:
        try:
            cfg = json.loads(read_text(local / CONFIG_FILE, "model config"))
        except Exception:  # noqa: BLE001 - a card never fails a run; load_model reports a bad config itself
            return None, None
        if not isinstance(cfg, dict):
            return None, None
        pcfg = cfg.get("pretrained_cfg") if isinstance(cfg.get("pretrained_cfg"), dict) else {}
        hub = cfg.get("hf_hub_id") or cfg.get("base_model") or pcfg.get("hf_hub_id")
        lic = cfg.get("license") or pcfg.get("license")
        return (hub if isinstance(hub, str) else None), (lic if isinstance(lic, str) else None)
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name has no facts
        cfg = None
    if cfg is None:
        return None, None
    return cfg.hf_hub_id or None, cfg.license or None


# ------------------------------------------------------------------------------------ pruned-model directories
def save_pruned(model: nn.Module, out_dir: str | Path, spec: ModelSpec, kept: dict[str, list[list[int]]],
                dense_widths: dict[str, list[int]], data_config: dict | None = None,
                classes: list[int] | None = None, *, label_names: list[str] | None = None,
                card: ModelCard | None = None) -> None:
    """`model.safetensors` + `structure.json` (base architecture, kwargs, per unit kind the dense widths, the
    widths and kept unit indices of every block (width 0: the branch is its bias), and for a
    class-specialised model `classes`: the original class id of each output) + `config.json` (timm's
    `local-dir:` format for prune's architecture `prune_vit`, with the preprocessing and `label_names`, the
    name of each output) + `README.md` (the model card: `card`, what the caller knows, and the counts)."""
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
    write_state(out / WEIGHTS_FILE, state)
    write_json(out / STRUCTURE_FILE, structure)
    num_classes = int(getattr(model, "num_classes", 0))
    if label_names is not None and len(label_names) != num_classes:
        label_names = None  # names that do not match the outputs name nothing
    extra = {"prune": {"version": __version__, "structure": STRUCTURE_FILE,
                       **({"classes": list(classes)} if classes is not None else {})}}
    args = model_args(spec.architecture, spec.model_kwargs, {k: u["widths"] for k, u in units.items()})
    preprocessing = {**_timm_data_config(model), **(data_config or {})}
    config = timm_config(args, preprocessing, num_classes, int(getattr(model, "num_features", embed_dim)),
                         label_names, base_model_facts(card.base_model)[1] if card else None, extra)
    write_json(out / CONFIG_FILE, config)
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
    structure = json.loads(read_text(path / STRUCTURE_FILE, "structure file"))
    config = json.loads(read_text(path / CONFIG_FILE, "model config"))
    param = next(model.parameters())
    example = torch.zeros(1, *config["pretrained_cfg"]["input_size"], dtype=param.dtype, device=param.device)
    params, macs = count_params_macs(model, example)
    write_card(path, {**structure, "units": structure_units(structure)}, config, params, macs, card,
               base_model_facts(card.base_model if card else None))


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
    sfile = path / STRUCTURE_FILE
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
    weights = path / WEIGHTS_FILE
    state = load_safetensors(weights, "; it may be truncated: rebuild it (rerun the recipe) or restore it")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((l.strip() for l in str(e).splitlines() if "size mismatch" in l or "Missing" in l),
                      str(e).splitlines()[0])
        raise ConfigError(f"{weights} does not fit {sfile.name}: {detail[:200]}") from None
    return model.eval(), structure
