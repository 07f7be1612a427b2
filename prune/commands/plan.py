"""`prune plan`: the per-block plan of a recipe's cut, before any surgery."""

from __future__ import annotations


def run(args) -> int:
    from pathlib import Path

    from ..io import write_json
    from ..pipeline import Pipeline
    from ..budget import render
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or f"runs/{recipe.name}"
    args.writes = out
    plans = Pipeline(recipe, out, update=args.update, progress=not args.quiet).plan()
    from ..report import describe_target

    for label, plan in plans:
        target = recipe if label is None else dict(recipe.sweep())[label]
        what = describe_target({"prune": target.prune.model_dump(),
                                "macs": {"dense": plan["macs_dense"], "pruned": plan["macs_planned"]},
                                "latency_predicted": {"dense_ms": plan["ms_dense"], "pruned_ms": plan["ms_planned"]}
                                if "ms_dense" in plan else None})
        print(f"\n{recipe.name}{'' if label is None else f' ({label})'}: {recipe.importance.kind} importance, "
              f"{what}: reachable")
        for line in render(plan):
            print("  " + line)
    result = plans[0][1] if plans[0][0] is None else {label: plan for label, plan in plans}
    write_json(Path(out) / "plan.json", result)
    if args.json:
        write_json(args.json, result)
    print(f"wrote {out}/plan.json" + (f" and {args.json}" if args.json else ""))
    return 0
