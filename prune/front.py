"""The accuracy-latency front of a set of measured artifacts: which of them no other beats on both top-1
and latency, the fastest one within a top-1 tolerance of dense, and one plot that shows it all (a run's
report and a sweep's both draw it).

A point is a dict: `name`, `label` (the text the plot writes beside it; None: none), `top1`, `ms` (`{batch size: median ms}`), `speedup`
(`{batch size: dense ms / ms}`, measured in the same bench), `int8`, `dense` and `shipped` (bools; shipped:
the run writes this very model as a file, where a one-shot model before its fine-tune is not).
"""

from __future__ import annotations

from pathlib import Path


def on_front(points: list[dict], batch: str) -> list[bool]:
    """For each point, whether no other point is at least as fast at `batch` and at least as accurate, and
    strictly better in one of the two (points without a latency at `batch` are never on it)."""
    flags = []
    for p in points:
        if batch not in p["ms"]:
            flags.append(False)
            continue
        beaten = any(batch in q["ms"] and q["ms"][batch] <= p["ms"][batch] and q["top1"] >= p["top1"]
                     and (q["ms"][batch] < p["ms"][batch] or q["top1"] > p["top1"]) for q in points if q is not p)
        flags.append(not beaten)
    return flags


def recommend(points: list[dict], batch: str, dense_top1: float, max_drop: float) -> int | None:
    """The index of the fastest point at `batch` whose top-1 is within `max_drop` of `dense_top1` (on a tie the
    more accurate one, then one the run ships as a file: `shipped`); None when no point is."""
    ok = [i for i, p in enumerate(points) if batch in p["ms"] and p["top1"] >= dense_top1 - max_drop - 1e-12]
    return min(ok, key=lambda i: (points[i]["ms"][batch], -points[i]["top1"], not points[i].get("shipped", True))) \
        if ok else None


def plot_front(points: list[dict], batches: list[str], path: Path, engine: str, recommended: int | None = None,
               title: str = "accuracy vs latency") -> None:
    """One panel per batch size: int8 files as triangles, one-shot models hollow, the dense model grey, the front
    as a line, the recommended point ringed, and each point's `label` beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .io import atomic_path

    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.2), squeeze=False)
    for ax, b in zip(axes[0], batches):
        shown = [p for p in points if b in p["ms"]]
        for p in shown:
            colour = "#777" if p["dense"] else ("#c63" if p["int8"] else "#37a")
            hollow = not (p["dense"] or p["int8"] or p.get("shipped", True))  # a one-shot model before its recovery
            ax.scatter(p["ms"][b], p["top1"] * 100, s=42, marker="^" if p["int8"] else "o", zorder=3,
                       color="white" if hollow else colour, edgecolors=colour, linewidths=1.2)
        front = sorted((p for p, f in zip(shown, on_front(shown, b)) if f), key=lambda p: p["ms"][b])
        if len(front) > 1:
            ax.step([p["ms"][b] for p in front], [p["top1"] * 100 for p in front], where="post", color="#3a7",
                    lw=1.5, zorder=2, label="front")
        if recommended is not None and b in points[recommended]["ms"]:
            r = points[recommended]
            ax.scatter(r["ms"][b], r["top1"] * 100, s=220, facecolors="none", edgecolors="#3a7", lw=2, zorder=4,
                       label="recommended")
        spots: dict[tuple, list[str]] = {}  # points at one spot (a model and its recovery) share one label
        for p in shown:
            if p.get("label"):
                spots.setdefault((p["ms"][b], p["top1"]), []).append(p["label"])
        for i, ((x, y), names) in enumerate(sorted(spots.items())):
            ax.annotate(" = ".join(names), (x, y * 100), textcoords="offset points",
                        xytext=(7, 7 if i % 2 == 0 else -12), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(6))
        ax.margins(x=0.15, y=0.12)
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"{engine} latency, batch {b} (ms, median)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{title}, batch {b}")
        key = [("o", "#37a", "#37a", "pruned, shipped (fp32)"), ("o", "white", "#37a", "pruned, before recovery"),
               ("^", "#c63", "#c63", "int8"), ("o", "#777", "#777", "dense (fp32, int8 as ^)")]
        handles = [plt.Line2D([], [], ls="", marker=m, markerfacecolor=f, markeredgecolor=e, color=e, label=t)
                   for m, f, e, t in key]
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
