"""The run's report: `metrics.json` (machine-readable), `report.md` (tables) and plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import Artifact, artifacts
from .io import atomic_path, write_json


def run_artifacts(m: dict) -> list[Artifact]:
    """The artifacts a run's summary has figures for (dense, pruned, and fine-tuned when it was)."""
    return artifacts(1 if "finetuned" in m["accuracy"] else 0)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def render_markdown(m: dict) -> str:
    """A person's view of `metrics.json`: dense vs pruned vs fine-tuned."""
    rows = run_artifacts(m)
    lat = m.get("latency", {})
    lines = [f"# {m['recipe']}: {m['importance']} importance, {m['prune']['ratio']:.0%} of FFN neurons removed", "",
             f"Model `{m['model']}` on `{m['data']}`; prune scope {m['prune']['scope']}, compensation "
             f"{m['prune']['compensate']}.", ""]
    header = ["model", "top-1", "top-5", "params", "MACs"]
    engines = [(eng, b) for eng in ("onnxruntime", "onnxruntime_cuda", "pytorch") if eng in lat for b in lat[eng]["dense"]]
    header += [f"{eng} b{b} ms" for eng, b in engines] + [f"{eng} b{b} speed-up" for eng, b in engines]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in rows:
        r, struct = a.name, a.structure
        acc = m["accuracy"][r]
        cells = [r, _fmt(acc["top1"], ".4f"), _fmt(acc["top5"], ".4f"), f"{m['params'][struct]:,}", f"{m['macs'][struct]:,}"]
        ms = [lat[eng][struct][b]["median_ms"] for eng, b in engines]
        dense_ms = [lat[eng]["dense"][b]["median_ms"] for eng, b in engines]
        cells += [f"{v:.2f}" for v in ms] + [f"{d / v:.2f}x" for d, v in zip(dense_ms, ms)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"MACs ratio pruned/dense: {m['macs']['pruned'] / m['macs']['dense']:.3f} "
              f"(the speed-up a perfect kernel would give: {m['macs']['dense'] / m['macs']['pruned']:.2f}x). "
              f"Fine-tuned and pruned share one structure, so one latency row stands for both.", ""]
    if "finetune" in m:
        f = m["finetune"]
        lines += [f"Fine-tune budget: {f['epochs']} epochs on {f['train_images']} images"
                  f"{', distilled from the dense model' if f.get('distill') else ''}.", ""]
    if "onnx" in m:
        for name, p in m["onnx"].items():
            diffs = ", ".join(f"batch {k.split('_')[1]}: {v['max_abs_diff']:.2e}" for k, v in p["parity"].items()
                              if k.startswith("batch_"))
            lines.append(f"ONNX `{name}` (opset {p['opset']}): max |ORT - PyTorch| {diffs} (tolerance {p['parity']['atol']}).")
        lines.append("")
    if lat:
        lines += [f"Latency: median of {m['bench']['repeats']} alternating runs after {m['bench']['warmup']} warm-up; "
                  f"threads {m['bench']['threads']}.", ""]
    widths = m["ffn_widths"]["pruned"]
    lines += ["FFN width kept per block: " + ", ".join(str(w) for w in widths), ""]
    lines += ["Plots: " + ", ".join(f"![{p}](plots/{p})" for p in m.get("plots", [])), ""]
    return "\n".join(lines)


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

    lat = m.get("latency", {})
    eng = "onnxruntime" if "onnxruntime" in lat else ("pytorch" if "pytorch" in lat else None)
    if eng:
        b = sorted(lat[eng]["dense"], key=int)[0]
        fig, ax = plt.subplots(figsize=(5, 4))
        for a in run_artifacts(m):
            x = lat[eng][a.structure][b]["median_ms"]
            ax.scatter([x], [m["accuracy"][a.name]["top1"] * 100], s=60, label=a.name)
        ax.set_xlabel(f"{eng} latency, batch {b} (ms, median)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("accuracy vs latency")
        ax.legend()
        save(fig, "accuracy_vs_latency.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    dense, pruned = m["ffn_widths"]["dense"], m["ffn_widths"]["pruned"]
    ax.bar(range(len(dense)), dense, color="#ccc", label="dense")
    ax.bar(range(len(pruned)), pruned, color="#3a7", label="kept")
    ax.set_xlabel("block")
    ax.set_ylabel("FFN neurons")
    ax.legend()
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
