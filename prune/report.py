"""The run's report: `metrics.json` (machine-readable), `report.md` (tables) and plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import CHAIN, DENSE, Artifact
from .io import atomic_path, write_json


def run_artifacts(m: dict) -> list[Artifact]:
    """The artifacts a run's summary has figures for (dense, pruned, re-fitted and fine-tuned when it was)."""
    return [a for a in (DENSE, *CHAIN) if a.name in m["accuracy"]]


UNIT_NAMES = {"ffn": "FFN neurons", "heads": "attention heads"}


def describe_target(m: dict) -> str:
    """What the run removed, in the recipe's terms: a share of MACs, or a share of each kind's units."""
    p = m["prune"]
    kinds = " and ".join(UNIT_NAMES.get(k, k) for k in p.get("units", ["ffn"]))
    if p.get("latency_ratio") is not None:
        lp = m.get("latency_predicted") or {}
        done = f" ({1 - lp['pruned_ms'] / lp['dense_ms']:.1%} predicted)" if lp else ""
        return f"{p['latency_ratio']:.0%} of the measured latency to remove by pruning {kinds}{done}"
    if p.get("macs_ratio") is not None:
        done = 1 - m["macs"]["pruned"] / m["macs"]["dense"]
        return f"{p['macs_ratio']:.0%} of MACs to remove by pruning {kinds} ({done:.1%} removed)"
    return f"{p['ratio']:.0%} of {kinds} removed"


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def artifact_rows(m: dict) -> list[dict]:
    """One row per artifact the run measured: the PyTorch models (dense, pruned, fine-tuned) and the int8
    ONNX files (`export.quantize`), each with its accuracy, its structure (for params and MACs) and the name
    its latency is filed under per engine (None where that engine did not run it)."""
    lat = m.get("latency", {})
    rows = []
    for a in run_artifacts(m):
        acc = m["accuracy"][a.name]
        rows.append({"name": a.name, "top1": acc["top1"], "top5": acc["top5"], "structure": a.structure,
                     "latency": {eng: a.structure for eng in lat}})
    for name, p in (m.get("onnx") or {}).items():
        if "int8" in p:
            structure = "dense" if p["of"] == "dense" else "pruned"
            rows.append({"name": name, "top1": p["int8"]["top1"], "top5": None, "structure": structure,
                         "latency": {eng: name if name in lat[eng] else None for eng in lat},
                         "flag": not p["int8"]["within_threshold"]})
    return rows


def latency_engine(m: dict) -> str | None:
    """The engine a run's front is drawn on: onnxruntime (which also times the int8 files), else PyTorch."""
    lat = m.get("latency", {})
    return next((e for e in ("onnxruntime", "pytorch") if e in lat), None)


def summary_points(m: dict, target: str | None = None) -> list[dict]:
    """Every artifact of a run with a latency on its front's engine, as `front` points: top-1, median ms
    and speed-up over the dense model per batch size, and the files its figures were measured on. A run
    that measured no latency gives every artifact, with no ms."""
    eng = latency_engine(m)
    lat, where = (m["latency"][eng] if eng else {}), m.get("measured_on", {})
    final = run_artifacts(m)[-1].name  # its ONNX file is the one whose latency every pruned artifact shares
    points = []
    for row in artifact_rows(m):
        key = row["latency"].get(eng) if eng else None
        if key is None and eng:
            continue
        ms = {b: v["median_ms"] for b, v in lat[key].items()} if key else {}
        accuracy_file = where.get("accuracy", {}).get(row["name"]) or where.get("onnx", {}).get(row["name"])
        points.append({"target": target, "artifact": row["name"], "name": row["name"], "label": row["name"],
                       "top1": row["top1"],
                       "structure": row["structure"], "ms": ms,
                       "speedup": {b: lat["dense"][b]["median_ms"] / v for b, v in ms.items()},
                       "int8": "int8" in row["name"], "dense": row["structure"] == "dense",
                       "shipped": row["name"] in (final, "dense") or "int8" in row["name"],
                       "files": {"accuracy": accuracy_file,
                                 "latency": where.get("latency", {}).get(eng, {}).get(key) if key else None}})
    return points


def int8_warnings(m: dict) -> list[str]:
    """One line per int8 file that loses more top-1 against its fp32 file than the recipe allows."""
    out = []
    for name, p in (m.get("onnx") or {}).items():
        j = p.get("int8")
        if j and not j["within_threshold"]:
            out.append(f"{name}.onnx loses {j['drop'] * 100:.2f} points top-1 against {p['of']}.onnx "
                       f"({j['top1']:.4f} vs {j['fp32_top1']:.4f}; threshold {j['max_drop'] * 100:.2f}): "
                       "not recommended for deployment")
    return out


def noise_warnings(m: dict) -> list[str]:
    """One line per engine whose latency figures are flagged noisy by the bench stage."""
    return [f"{eng} latency is noisy ({'; '.join(n['reasons'])}): treat its figures as rough"
            for eng, n in ((m.get("bench") or {}).get("noise") or {}).items() if n.get("noisy")]


def render_markdown(m: dict) -> str:
    """A person's view of `metrics.json`: every artifact's accuracy, size and latency."""
    lat = m.get("latency", {})
    lines = [f"# {m['recipe']}: {m['importance']} importance, {describe_target(m)}", "",
             f"Model `{m['model']}` on `{m['data']}`; prune scope {m['prune']['scope']}, compensation "
             f"{m['prune']['compensate']}.", ""]
    warnings = int8_warnings(m) + noise_warnings(m)
    lines += [f"**Warning**: {w}" for w in warnings] + ([""] if warnings else [])
    header = ["model", "top-1", "top-5", "params", "MACs"]
    engines = [(eng, b) for eng in ("onnxruntime", "onnxruntime_cuda", "pytorch") if eng in lat for b in lat[eng]["dense"]]
    header += [f"{eng} b{b} ms" for eng, b in engines] + [f"{eng} b{b} speed-up" for eng, b in engines]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in artifact_rows(m):
        struct = row["structure"]
        cells = [row["name"] + (" (flagged)" if row.get("flag") else ""), _fmt(row["top1"], ".4f"),
                 _fmt(row["top5"], ".4f"), f"{m['params'][struct]:,}", f"{m['macs'][struct]:,}"]
        ms = [lat[eng][row["latency"][eng]][b]["median_ms"] if row["latency"].get(eng) else None for eng, b in engines]
        dense_ms = [lat[eng]["dense"][b]["median_ms"] for eng, b in engines]
        cells += [_fmt(v, ".2f") for v in ms] + ["-" if v is None else f"{d / v:.2f}x" for d, v in zip(dense_ms, ms)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"MACs ratio pruned/dense: {m['macs']['pruned'] / m['macs']['dense']:.3f} "
              f"(the speed-up a perfect kernel would give: {m['macs']['dense'] / m['macs']['pruned']:.2f}x). "
              f"Fine-tuned and pruned share one structure, so one latency row stands for both.", ""]
    if "finetune" in m:
        f = m["finetune"]
        lines += [f"Fine-tune budget: {f['epochs']} epochs on {f['train_images']} images"
                  f"{', distilled from the dense model' if f.get('distill') else ''}.", ""]
        rec = f.get("recovery")
        if rec:
            lines += [f"Recovery, judged on {rec['holdout_images']} held-out training images (top-1): one-shot "
                      f"{rec['oneshot']:.4f}, best {rec['best']:.4f} (epoch {rec['best_epoch']}), last "
                      f"{rec['last']:.4f}; the fine-tuned model is the best of these "
                      f"({'the one-shot weights' if rec['best_epoch'] == 0 else 'epoch ' + str(rec['best_epoch'])}).", ""]
    if "onnx" in m:
        for name, p in m["onnx"].items():
            if "int8" in p:
                j = p["int8"]
                lines.append(f"ONNX `{name}` ({p['format']}, {', '.join(p['ops'])} in int8): top-1 {j['top1']:.4f} vs "
                             f"{j['fp32_top1']:.4f} for `{p['of']}` in fp32 on {j['images']} images, top-1 agreement "
                             f"{j['agreement']:.4f}.")
                continue
            diffs = ", ".join(f"batch {k.split('_')[1]}: {v['max_abs_diff']:.2e}" for k, v in p["parity"].items()
                              if k.startswith("batch_"))
            lines.append(f"ONNX `{name}` (opset {p['opset']}): max |ORT - PyTorch| {diffs} (tolerance {p['parity']['atol']}).")
        lines.append("")
    lp = m.get("latency_predicted")
    if lp:
        measured = (lat.get("onnxruntime" if lp["runtime"] == "onnxruntime" else "pytorch") or {})
        b = str(lp["batch_size"])
        got = [measured.get(n, {}).get(b, {}).get("median_ms") for n in ("dense", "pruned")]
        line = (f"Latency budget ({lp['runtime']}, {lp['provider']}, batch {b}, threads {lp['threads'] or 'default'}): "
                f"predicted {lp['dense_ms']:.3f} ms dense, {lp['pruned_ms']:.3f} ms pruned "
                f"({lp['dense_ms'] / lp['pruned_ms']:.2f}x)")
        if None not in got:
            anchored = anchored_prediction(lp, got[0])
            line += (f"; measured {got[0]:.3f} and {got[1]:.3f} ms ({got[0] / got[1]:.2f}x; prediction error on the "
                     f"pruned model {lp['pruned_ms'] / got[1] - 1:+.1%}, {anchored / got[1] - 1:+.1%} once anchored "
                     f"to the dense model measured beside it: {anchored:.3f} ms)")
        if lp.get("warning"):
            line += f". Warning: {lp['warning']}"
        lines += [line + ".", ""]
    if lat:
        lines += [f"Latency: median of {m['bench']['repeats']} alternating runs after {m['bench']['warmup']} warm-up; "
                  f"threads {m['bench']['threads']}.", ""]
    for kind, w in m.get("widths", {"ffn": m["ffn_widths"]}).items():
        lines += [f"{UNIT_NAMES.get(kind, kind)} kept per block: " + ", ".join(str(v) for v in w["pruned"]), ""]
    if m.get("emptied_blocks"):
        lines += [f"Blocks reduced to a skip connection (every head and neuron removed): {m['emptied_blocks']}", ""]
    lines += ["Plots: " + ", ".join(f"![{p}](plots/{p})" for p in m.get("plots", [])), ""]
    return "\n".join(lines)


def anchored_prediction(predicted: dict, dense_measured_ms: float) -> float:
    """The pruned model's predicted ms scaled to the dense model measured in the same bench run.

    The table and the bench time the same dense graph at different moments; on a busy or throttled
    machine they disagree by a factor that has nothing to do with the cut. The table's predicted
    speed-up times the bench's own dense measurement leaves that factor out."""
    return dense_measured_ms * predicted["pruned_ms"] / predicted["dense_ms"]


def plot_all(m: dict, stats_path: Path | None, out_dir: Path, classes: int = 4) -> list[str]:
    """accuracy_vs_latency.png, widths.png and per-class path heat maps; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []

    def save(fig, name):
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(name)

    eng = latency_engine(m)
    points = summary_points(m) if eng else []
    if points:
        from .front import plot_front

        batches = sorted(m["latency"][eng]["dense"], key=int)
        plot_front(points, batches, out_dir / "accuracy_vs_latency.png", eng)
        made.append("accuracy_vs_latency.png")

    kinds = m.get("widths", {"ffn": m["ffn_widths"]})
    fig, axes = plt.subplots(len(kinds), 1, figsize=(6, 2.6 * len(kinds)), squeeze=False)
    for ax, (kind, w) in zip(axes[:, 0], kinds.items()):
        ax.bar(range(len(w["dense"])), w["dense"], color="#ccc", label="dense")
        ax.bar(range(len(w["pruned"])), w["pruned"], color="#3a7", label="kept")
        ax.set_ylabel(UNIT_NAMES.get(kind, kind))
        ax.legend()
    axes[-1, 0].set_xlabel("block")
    save(fig, "widths.png")

    if stats_path is not None and stats_path.is_file():
        from .paths import PathStats

        stats = PathStats.load(stats_path)
        shown = [c for c in range(stats.num_classes) if stats.counts[c] > 0][:classes]
        if shown:
            fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.6 * len(shown)), squeeze=False)
            for ax, c in zip(axes[:, 0], shown):
                ax.imshow((stats.freq[c].float() / stats.counts[c]).numpy(), aspect="auto", cmap="magma",
                          interpolation="nearest", vmin=0, vmax=1)
                ax.set_ylabel(f"class {c}\nblock")
            axes[-1, 0].set_xlabel("FFN neuron")
            fig.suptitle("fraction of the class's images with the neuron on their path")
            save(fig, "path_heatmaps.png")
    return made


def write_report(m: dict, out_dir: Path, stats_path: Path | None, heatmap_classes: int = 4) -> dict:
    m = {**m, "plots": plot_all(m, stats_path, out_dir / "plots", heatmap_classes)}
    write_json(out_dir / "metrics.json", m)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(render_markdown(m))
    return m
