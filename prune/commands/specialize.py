"""`prune specialize`: a finished run's recipe for some classes only, reusing its path statistics."""

from __future__ import annotations

from .options import usage
from .recipe import print_summary


def run(args) -> int:
    import re
    import shutil
    from pathlib import Path

    from ..pipeline import Pipeline
    from ..recipe import Recipe, load_recipe, validate_environment

    run = Path(args.run)
    if not (run / "recipe.yaml").is_file():
        raise usage(f"{run} is not a prune run directory (no recipe.yaml); give the --out of a finished prune --recipe run")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise usage("--classes is empty; give class indices or names separated by commas")
    base = load_recipe(str(run / "recipe.yaml"), args.overrides)
    data = base.model_dump(mode="json")
    data["prune"]["classes"] = [int(c) if c.isdigit() else c for c in classes]
    pr = data["prune"]
    named = any(o.split("=", 1)[0].strip() == "prune.max_layer_ratio" for o in args.overrides)
    if (not named and pr.get("macs_ratio") is None and pr["scope"] == "global"
            and isinstance(pr["max_layer_ratio"], (int, float)) and pr["max_layer_ratio"] < pr["ratio"] + 0.05):
        # a specialised model removes most units; a cap at the ratio itself is unreachable once every block
        # keeps its rounded-up share, so give the cap room unless the user set it
        pr["max_layer_ratio"] = min(1.0, round(pr["ratio"] + 0.05, 4))
        print(f"[specialize] prune.max_layer_ratio {pr['max_layer_ratio']} (the ratio + 0.05) so that prune.ratio "
              f"{pr['ratio']} is reachable; set prune.max_layer_ratio to choose another")
    from pydantic import ValidationError

    from ..recipe import _describe

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise usage(_describe(e.errors()[0])) from None
    validate_environment(recipe)
    out = Path(args.out or f"{run}-classes-{re.sub(r'[^A-Za-z0-9_.-]+', '_', '-'.join(classes))}")
    args.writes = out
    paths = run / "paths"
    reuse = (paths / "stage.json").is_file() and not (out / "paths").exists()
    pipeline = Pipeline(recipe, out, update=args.update, progress=not args.quiet)  # checks --out first
    if reuse:  # the paths stage does not depend on prune.classes: its key matches, so it is reused
        shutil.copytree(paths, out / ".paths.copy")
        (out / ".paths.copy").rename(out / "paths")
    summary = pipeline.run()
    print_summary(summary, str(out))
    return 0
