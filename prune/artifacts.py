"""The models a run produces, and the one rule for which of them it ships.

Export, bench, report and the CLI all ask here, so a figure and the file it describes cannot
come from two different rules. The final model is decided by the recipe (fine-tuned when
`finetune.epochs > 0`, else pruned), never by which files happen to exist: a run whose
fine-tune stage is missing is incomplete, not a pruned run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .run import damage


@dataclass(frozen=True)
class Artifact:
    name: str  # "dense", "pruned", "finetuned"
    stage: str | None  # the run stage directory that holds the model; None: the recipe's own (dense) model
    structure: str  # "dense" or "pruned": artifacts of one structure share params, MACs and latency


def final_stage(finetune_epochs: int) -> str:
    """The stage whose model the run ships."""
    return "finetune" if finetune_epochs > 0 else "prune"


def artifacts(finetune_epochs: int) -> list[Artifact]:
    """Every model of a run, in order: dense, pruned, and fine-tuned when the recipe fine-tunes."""
    out = [Artifact("dense", None, "dense"), Artifact("pruned", "prune", "pruned")]
    if finetune_epochs > 0:
        out.append(Artifact("finetuned", "finetune", "pruned"))
    return out


def shipped(finetune_epochs: int) -> list[tuple[str, Artifact]]:
    """What export and bench deploy: `(onnx name, artifact)` for the dense model and the final one.
    The final model's file is `pruned.onnx` whether or not it was fine-tuned."""
    every = artifacts(finetune_epochs)
    return [("dense", every[0]), ("pruned", every[-1])]


def run_recipe(run: Path) -> dict:
    """The resolved recipe of a run directory."""
    import yaml

    try:
        return yaml.safe_load((Path(run) / "recipe.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{run}/recipe.yaml cannot be read ({type(e).__name__}); is {run} a prune run directory?") from None


def final_model_dir(run: Path, recipe: dict | None = None) -> Path:
    """The directory of the model a run ships; a ConfigError when the run has not made it yet."""
    run = Path(run)
    recipe = run_recipe(run) if recipe is None else recipe
    stage = final_stage(int((recipe.get("finetune") or {}).get("epochs", 0)))
    path = run / stage
    what = "fine-tuned" if stage == "finetune" else "pruned"
    for s, w in (("prune", "pruned"), (stage, what)):  # an unpruned run first says so
        if not (run / s / "stage.json").is_file():
            raise ConfigError(f"run directory {run} has no {w} model yet ({s}/ is not complete); run its recipe first")
    try:
        problem = damage(path, json.loads((path / "stage.json").read_text()).get("files"))
    except (OSError, ValueError):
        problem = f"{stage}/stage.json is damaged"
    if problem is not None:
        raise ConfigError(f"run directory {run}: its {what} model cannot be trusted ({problem}); "
                          "rerun its recipe to rebuild it")
    return path
