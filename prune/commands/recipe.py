"""`prune --recipe`: run a recipe's pipeline and print its summary (or a sweep's front)."""

from __future__ import annotations

import sys

from .options import usage


def run(args) -> int:
    from ..pipeline import STAGES, Pipeline
    from ..recipe import load_recipe, validate_environment

    force = set(args.force)
    unknown = force - set(STAGES) - {"all"}
    if unknown:
        raise usage(f"--force {sorted(unknown)[0]}: not a stage; stages are {', '.join(STAGES)} (or all)")
    if "all" in force:
        force = set(STAGES)
    recipe = load_recipe(args.recipe, args.overrides)
    validate_environment(recipe)
    out = args.out or f"runs/{recipe.name}"
    args.writes = out
    summary = Pipeline(recipe, out, update=args.update, progress=not args.quiet).run(force)
    from .. import dist

    runs = summary["targets"] if "sweep" in summary else {None: summary}
    if dist.is_main():
        if "sweep" in summary:
            print_sweep(summary, out, recipe.prune.swept())
        else:
            print_summary(summary, out)
    from ..report import int8_warnings

    warned = [w for s in runs.values() for w in int8_warnings(s)]
    if recipe.export.fail_on_int8_drop and warned:
        print(f"prune: error: {warned[0]} (export.fail_on_int8_drop is set)", file=sys.stderr)
        return 1
    return 0


def print_sweep(summary: dict, out: str, swept: str) -> None:
    """The sweep's points, fastest first, the recommended one, and every target's warnings."""
    from ..report import int8_warnings, noise_warnings

    s = summary["sweep"]
    for target, m in summary["targets"].items():
        for w in int8_warnings(m) + noise_warnings(m):
            print(f"  warning ({target}): {w}")
    if not s["batch_sizes"]:
        print(f"\nsweep over prune.{swept}: no latency was measured (bench is off), so no front; {out}/sweep/")
        return
    b = s["batch_sizes"][0]
    print(f"\nsweep over prune.{swept} ({s['engine']}, batch {b}; * on the front):")
    for p in sorted(s["points"], key=lambda p: p["ms"][b]):
        print(f"  {'*' if p['front'][b] else ' '} {p['name']:34s} top-1 {p['top1']:.4f} "
              f"({(p['top1'] - s['dense_top1']) * 100:+.2f})  {p['ms'][b]:8.3f} ms  {p['speedup'][b]:.2f}x")
    rec = s["recommended"]
    if rec is None:
        print(f"  no artifact is within {s['max_drop'] * 100:.1f} points of dense (report.max_drop)")
    else:
        p = s["points"][rec]
        print(f"  recommended (fastest within {s['max_drop'] * 100:.1f} points of dense): {p['name']}, "
              f"{p['speedup'][b]:.2f}x at batch {b}, {(p['top1'] - s['dense_top1']) * 100:+.2f} points; "
              f"{p['files']['latency']['path'] if isinstance(p['files']['latency'], dict) else ''}")
    print(f"sweep report: {out}/sweep/sweep.md (front.png, sweep.json); summary.json lists every point")


def print_summary(s: dict, out: str) -> None:
    from ..report import artifact_rows, int8_warnings

    params, macs = s["params"], s["macs"]
    arts = artifact_rows(s)
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [("", *(a["name"] for a in arts)),
            ("top-1", *(fmt(a["top1"], ".4f") for a in arts)),
            ("top-5", *(fmt(a["top5"], ".4f") for a in arts)),
            ("params", *(f"{params[a['structure']]:,}" for a in arts)),
            ("MACs", *(f"{macs[a['structure']]:,}" for a in arts))]
    for eng, lat in s.get("latency", {}).items():
        for b in lat["dense"]:
            rows.append((f"{eng} b{b} ms", *(fmt(lat[a["latency"][eng]][b]["median_ms"], ".2f")
                                              if a["latency"].get(eng) else "-" for a in arts)))
    from ..report import describe_target

    print(f"\n{s['recipe']}: {s['importance']} importance, {describe_target(s)} "
          f"({s['prune']['scope']}, compensate={s['prune']['compensate']})")
    if s.get("classes") is not None:
        print(f"  specialised to classes {s['classes']} (original ids; accuracy on their test images only)")
    for name, *vals in rows:
        print(f"  {name:20s}" + "".join(f"{v:>{max(14, len(h) + 2)}s}" for v, h in zip(vals, rows[0][1:])))
    from ..report import noise_warnings

    for w in int8_warnings(s) + noise_warnings(s):
        print(f"  warning: {w}")
    rec = (s.get("finetune") or {}).get("recovery")
    if rec:
        print(f"  recovery on {rec['holdout_images']} held-out images: one-shot {rec['oneshot']:.4f}, best "
              f"{rec['best']:.4f} (epoch {rec['best_epoch']}), last {rec['last']:.4f}; kept the best")
    print(f"run directory: {out} (summary.json, report/report.md, one directory per stage)")
