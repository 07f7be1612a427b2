"""The models a run produces, and the one rule for which of them it ships.

Export, bench, report and the CLI all ask here, so a figure and the file it describes cannot
come from two different rules, and the only module that names the chain of model-producing
stages (prune -> [reconstruct] -> [finetune]). The final model is decided by the recipe (the last
stage of the chain it turns on), never by which files happen to exist: a run whose fine-tune stage
is missing is incomplete, not a pruned run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .recipe import TARGETS
from .run import damage


@dataclass(frozen=True)
class Artifact:
    name: str  # "dense", "pruned", "refitted", "finetuned"
    stage: str | None  # the run stage directory that holds the model; None: the recipe's own (dense) model
    structure: str  # "dense" or "pruned": artifacts of one structure share params, MACs and latency


# the chain of model-producing stages, in order: each reads the model of the one before it
CHAIN = (Artifact("pruned", "prune", "pruned"), Artifact("refitted", "reconstruct", "pruned"),
         Artifact("finetuned", "finetune", "pruned"))
DENSE = Artifact("dense", None, "dense")


def _setting(recipe, section: str, key: str, default):
    """A recipe value from a `Recipe` or its dict form (a run directory's recipe.yaml)."""
    part = (recipe.get(section) or {}) if isinstance(recipe, dict) else getattr(recipe, section)
    return part.get(key, default) if isinstance(part, dict) else getattr(part, key)


def model_stages(recipe) -> list[str]:
    """The model-producing stages the recipe runs, in order (prune, then re-fit and fine-tune when on)."""
    on = {"prune": True, "reconstruct": _setting(recipe, "prune", "reconstruct", "none") != "none",
          "finetune": int(_setting(recipe, "finetune", "epochs", 0)) > 0}
    return [a.stage for a in CHAIN if on[a.stage]]


def input_stage(recipe, stage: str) -> str:
    """The stage whose model `stage` (a model-producing stage) starts from."""
    stages = model_stages(recipe)
    return stages[stages.index(stage) - 1]


def input_artifact(recipe, stage: str) -> Artifact:
    """The model `stage` (a model-producing stage) starts from."""
    return artifact_of(input_stage(recipe, stage))


def artifact_of(stage: str) -> Artifact:
    """The model a stage of the chain holds."""
    return next(a for a in CHAIN if a.stage == stage)


def cut_stage(recipe) -> str:
    """The stage that holds the one-shot cut, before any recovery: what evaluate measures and the other
    stages of the chain start from."""
    return model_stages(recipe)[0]


def final_stage(recipe) -> str:
    """The stage whose model the run ships."""
    return model_stages(recipe)[-1]


def artifacts(recipe) -> list[Artifact]:
    """Every model of a run, in order: dense, pruned, then re-fitted and fine-tuned when the recipe does those."""
    stages = model_stages(recipe)
    return [DENSE] + [a for a in CHAIN if a.stage in stages]


def shipped(recipe) -> list[tuple[str, Artifact]]:
    """What export and bench deploy: `(onnx name, artifact)` for the dense model and the final one.
    The final model's file is `pruned.onnx` whether or not it was re-fitted or fine-tuned."""
    every = artifacts(recipe)
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
    swept = next((k for k, v in ((recipe.get("prune") or {}) if isinstance(recipe, dict) else {}).items()
                  if k in TARGETS and isinstance(v, list)), None)
    if swept is not None:
        names = sorted(p.name for p in (run / "targets").glob("*") if (p / "recipe.yaml").is_file())
        raise ConfigError(f"run directory {run} is a sweep over prune.{swept}: name one of its targets, "
                          f"{run}/targets/<target> ({', '.join(names) or 'none finished yet'})")
    stage = final_stage(recipe)
    path = run / stage
    what = {"finetune": "fine-tuned", "reconstruct": "re-fitted"}.get(stage, "pruned")
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
