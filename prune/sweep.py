"""A sweep's report (`sweep/`): every artifact of every target as a point of top-1 against measured latency,
the front, and the fastest artifact within `report.max_drop` of dense at the smallest benched batch size.

The dense model and its int8 files do not depend on the target: each appears once, at the median of the
latencies every target's bench measured for it (each target times it beside its own pruned files).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .front import on_front, plot_front, recommend
from .io import atomic_path, write_json
from .report import latency_engine, summary_points

NAME = "sweep"
FILE = "sweep.json"


def sweep_points(summaries: dict[str, dict]) -> list[dict]:
    """Every target's points (named `value artifact`), the dense ones merged into one per artifact."""
    points, dense = [], {}
    for label, m in summaries.items():
        value = label.rsplit("-", 1)[1]
        for p in summary_points(m, label):
            if p["dense"]:
                dense.setdefault(p["artifact"], []).append(p)
            else:
                final = p["shipped"] and not p["int8"]  # one label per target, at the model it ships
                points.append({**p, "name": f"{value} {p['artifact']}", "label": value if final else None})
    merged = []
    for artifact, ps in dense.items():
        ms = {b: statistics.median(p["ms"][b] for p in ps) for b in ps[0]["ms"]}
        merged.append({**ps[0], "target": None, "name": artifact, "label": artifact, "ms": ms,
                       "speedup": {b: 1.0 if artifact == "dense" else ms_dense(dense, b) / v for b, v in ms.items()},
                       "files": {**ps[0]["files"], "latency": [p["files"]["latency"] for p in ps]}})
    return merged + points


def ms_dense(dense: dict[str, list[dict]], b: str) -> float:
    return statistics.median(p["ms"][b] for p in dense["dense"])


def summarise(summaries: dict[str, dict], max_drop: float) -> dict:
    """`sweep.json`: the points (each flagged on or off the front per batch size), the recommended one, and
    the dense top-1 it is judged against."""
    first = next(iter(summaries.values()))
    eng = latency_engine(first)
    points = sweep_points(summaries)
    batches = sorted(first["latency"][eng]["dense"], key=int) if eng else []
    fronts = {b: on_front(points, b) for b in batches}
    for i, p in enumerate(points):
        p["front"] = {b: fronts[b][i] for b in batches}
    dense_top1 = first["accuracy"]["dense"]["top1"]
    best = recommend(points, batches[0], dense_top1, max_drop) if batches else None
    return {"engine": eng, "batch_sizes": batches, "dense_top1": dense_top1, "max_drop": max_drop,
            "recommended": best, "targets": list(summaries), "points": points}


def render_markdown(s: dict, swept: str) -> str:
    lines = [f"# Sweep over prune.{swept}: {', '.join(t.rsplit('-', 1)[1] for t in s['targets'])}", ""]
    if not s["batch_sizes"]:
        return "\n".join(lines + _accuracy_only(s))
    b, bs = s["batch_sizes"][0], s["batch_sizes"]
    rec = s["recommended"]
    if rec is None:
        lines += [f"No artifact is within {s['max_drop'] * 100:.1f} points of dense top-1 "
                  f"({s['dense_top1']:.4f}); raise `report.max_drop` or try smaller targets.", ""]
    else:
        p = s["points"][rec]
        where = p["files"]["latency"] if isinstance(p["files"]["latency"], dict) else None
        lines += [f"**Recommended** (fastest at batch {b} within {s['max_drop'] * 100:.1f} points of dense): "
                  f"`{p['name']}`, top-1 {p['top1']:.4f} ({(p['top1'] - s['dense_top1']) * 100:+.2f} points), "
                  f"{p['speedup'][b]:.2f}x faster than dense at batch {b} on {s['engine']}"
                  + (f"; file `{where['path']}`" if where else "") + ".", ""]
    header = ["point", "top-1", "vs dense"] + [f"b{x} ms" for x in bs] + [f"b{x} speed-up" for x in bs] + ["front"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(range(len(s["points"])), key=lambda i: s["points"][i]["ms"].get(b, float("inf")))
    for i in order:
        p = s["points"][i]
        front = ", ".join(f"b{x}" for x in bs if p["front"][x]) or "-"
        lines.append("| " + " | ".join([f"{p['name']}{' (recommended)' if i == rec else ''}", f"{p['top1']:.4f}",
                                        f"{(p['top1'] - s['dense_top1']) * 100:+.2f}"]
                                       + [f"{p['ms'][x]:.3f}" if x in p["ms"] else "-" for x in bs]
                                       + [f"{p['speedup'][x]:.2f}x" if x in p["speedup"] else "-" for x in bs]
                                       + [front]) + " |")
    lines += ["", f"Latency on {s['engine']} (median); the dense model and its int8 files at the median of every "
              "target's measurement. Each target's own report: `targets/<target>/report/report.md`. "
              "Plot: ![front](front.png)", ""]
    return "\n".join(lines)


def _accuracy_only(s: dict) -> list[str]:
    """The table of a sweep whose targets measured no latency (`bench.enabled: false`): no front, no pick."""
    lines = ["No latency was measured (`bench.enabled: false`), so there is no front and no recommendation: "
             "run again with the bench on (`--update` reuses every other stage).", "",
             "| point | top-1 | vs dense |", "|---|---|---|"]
    for p in s["points"]:
        lines.append(f"| {p['name']} | {p['top1']:.4f} | {(p['top1'] - s['dense_top1']) * 100:+.2f} |")
    return lines + [""]


def build(summaries: dict[str, dict], recipe, out: Path) -> dict:
    """Write `sweep.json`, `sweep.md` and `front.png`."""
    s = summarise(summaries, recipe.report.max_drop)
    if s["engine"]:
        plot_front(s["points"], s["batch_sizes"], out / "front.png", s["engine"], s["recommended"],
                   title=f"prune.{recipe.prune.swept()} sweep")
    write_json(out / FILE, s)
    with atomic_path(out / "sweep.md") as tmp:
        tmp.write_text(render_markdown(s, recipe.prune.swept()))
    return {"recommended": None if s["recommended"] is None else s["points"][s["recommended"]]["name"]}
