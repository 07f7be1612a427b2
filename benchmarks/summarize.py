"""Tables (markdown, printed) and plots (PNG) for RESULTS.md, made only from the raw results in
`benchmarks/results/`: the criteria sweeps' CSVs, the block-budget / progressive sweeps (`i9_<model>_<group>.csv`, the group one word),
the class-specialisation sweeps (`specialize_<model>.csv`, `specialize_cost_<model>.json`) and the discovery-budget JSON.

    python benchmarks/summarize.py                      # reads and writes benchmarks/results/
    python benchmarks/summarize.py --results some/dir   # another results folder

Sweep CSVs written before the `scope`, `top_k` and `seed` columns existed are read as seed 0 and
top-5, with the path criteria's scope taken from the file name (`..._tokens.csv`: tokens, otherwise cls). A configuration
found in several files must have the same accuracy in each (reruns are exact); a mismatch is an error.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

KIND_ORDER = ["taylor", "path_taylor", "activation_variance", "magnitude_l1", "magnitude_l2", "activation_mean",
              "path_frequency", "path_jas", "path_coverage", "random"]


def label(kind: str, scope: str) -> str:
    return f"{kind} ({scope})" if scope else kind


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_sweeps(results: Path) -> dict[tuple, dict[int, dict]]:
    """`{(ratio, kind, scope, compensate): {seed: row}}` from every `criteria_sweep_*.csv`."""
    table: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for f in sorted(results.glob("criteria_sweep_*.csv")):
        for r in csv.DictReader(open(f)):
            kind = r["kind"]
            scope = r.get("scope") or ""
            if kind.startswith("path") and scope in ("", "auto"):
                scope = "tokens" if f.stem.endswith("_tokens") else "cls"
            if kind.startswith("path"):  # files without a top_k column used top-5
                scope = f"{scope}, K={int(r.get('top_k') or 5)}"
            seed = int(r.get("seed") or 0)
            key = (float(r["ratio"]), kind, scope, r["compensate"])
            row = {"top1": float(r["top1"]), "finetuned_top1": float(r["finetuned_top1"]) if r.get("finetuned_top1") else None,
                   "file": f.name}
            old = table[key].get(seed)
            if old is not None and old["top1"] != row["top1"]:
                raise SystemExit(f"{key} seed {seed}: top1 {old['top1']} in {old['file']} but {row['top1']} in {f.name}")
            if old is None or row["finetuned_top1"] is not None:
                table[key][seed] = row
    return table


def spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value), in percent."""
    v = [100 * x for x in values]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else None)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = spread(values)
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f} (n={len(values)})"


def ordered(keys) -> list[tuple[str, str]]:
    return sorted(keys, key=lambda ks: (KIND_ORDER.index(ks[0]) if ks[0] in KIND_ORDER else 99, ks[1]))


def sweep_tables(table) -> str:
    ratios = sorted({k[0] for k in table})
    configs = ordered({(k[1], k[2]) for k in table})
    lines = ["One-shot top-1 (%) by criterion, FFN sparsity and compensation; mean ± standard deviation over seeds "
             "of image sampling where several were run (n = seeds).", "",
             "| criterion | " + " | ".join(f"{r:.0%} {c}" for r in ratios for c in ("none", "mean")) + " |",
             "|---|" + "---|" * (2 * len(ratios))]
    for kind, scope in configs:
        cells = [cell([row["top1"] for row in table.get((r, kind, scope, c), {}).values()])
                 for r in ratios for c in ("none", "mean")]
        lines.append(f"| {label(kind, scope)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(table) -> str:
    """Every configuration run with several seeds: the per-seed values, their mean and spread."""
    rows = [(k, seeds) for k, seeds in table.items() if len(seeds) > 1]
    if not rows:
        return "(no configuration with several seeds)"
    n = max(len(seeds) for _, seeds in rows)
    lines = ["| criterion | ratio | compensation | " + " | ".join(f"seed {i}" for i in range(n)) + " | mean ± sd |",
             "|---|---|---|" + "---|" * (n + 1)]
    order = {c: i for i, c in enumerate(ordered({(k[1], k[2]) for k, _ in rows}))}
    for (ratio, kind, scope, comp), seeds in sorted(rows, key=lambda r: (r[0][0], order[(r[0][1], r[0][2])], r[0][3])):
        vals = [f"{100 * seeds[i]['top1']:.2f}" if i in seeds else "-" for i in range(n)]
        m, sd = spread([row["top1"] for row in seeds.values()])
        lines.append(f"| {label(kind, scope)} | {ratio:.0%} | {comp} | " + " | ".join(vals) + f" | {m:.2f} ± {sd:.2f} |")
    return "\n".join(lines)


def finetune_table(table) -> str:
    rows = [(k, seed, row) for k, seeds in table.items() for seed, row in seeds.items() if row["finetuned_top1"] is not None]
    if not rows:
        return "(no fine-tuned rows)"
    lines = ["| criterion | ratio | seed | one-shot | after the short fine-tune | change |", "|---|---|---|---|---|---|"]
    for (ratio, kind, scope, comp), seed, row in sorted(rows, key=lambda r: (r[0][0], -r[2]["finetuned_top1"])):
        lines.append(f"| {label(kind, scope)}{'' if comp == 'none' else ', mean comp.'} | {ratio:.0%} | {seed} | "
                     f"{100 * row['top1']:.2f} | {100 * row['finetuned_top1']:.2f} | "
                     f"{100 * (row['finetuned_top1'] - row['top1']):+.2f} |")
    return "\n".join(lines)


def plot_sweep(table, dense: float | None, out: Path) -> None:
    plt = pyplot()
    configs = ordered({(k[1], k[2]) for k in table})
    colour = {c: plt.cm.tab20(i % 20) for i, c in enumerate(configs)}  # one colour per criterion in both panels
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, comp in zip(axes, ("none", "mean")):
        for kind, scope in configs:
            pts = sorted((r, spread([row["top1"] for row in seeds.values()]))
                         for (r, k, s, c), seeds in table.items() if (k, s, c) == (kind, scope, comp))
            if len(pts) < 2:
                continue
            style = "--" if kind == "random" else ("-" if kind.startswith("path") else ":")
            ax.errorbar([100 * r for r, _ in pts], [m for _, (m, _) in pts], yerr=[sd or 0 for _, (_, sd) in pts],
                        marker="o", ls=style, capsize=3, color=colour[(kind, scope)], label=label(kind, scope))
        if dense is not None:
            ax.axhline(100 * dense, color="k", lw=0.8)
        ax.set_title(f"one-shot, compensation: {comp}")
        ax.set_xlabel("FFN neurons removed (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CIFAR-10 top-1 (%); black line: dense")
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)


def budget_table(res: dict) -> str:
    lines = ["| images per class | top-K | images | discovery (s) | images/s | peak RSS (MB) | top-1 (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['images_per_class']} | {r['top_k']} | {r['images']} | {r['discovery_s']:.0f} | "
                     f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {100 * r['top1']:.2f} |")
    return "\n".join(lines)


def plot_budget(res: dict, out: Path) -> None:
    plt = pyplot()
    anchor_k, anchor_ipc = res["anchor_top_k"], res["anchor_images_per_class"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, fixed, name) in zip(axes, [("images_per_class", ("top_k", anchor_k), "images per class"),
                                             ("top_k", ("images_per_class", anchor_ipc), "top-K")]):
        rows = sorted((r for r in res["rows"] if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in rows]
        ax.plot(xs, [100 * r["top1"] for r in rows], "o-", color="C0")
        ax.axhline(100 * res["dense_top1"], color="k", lw=0.8, label="dense")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(f"{name} ({fixed[0].replace('_', ' ')} = {fixed[1]})")
        ax.set_ylabel(f"top-1 at {res['ratio']:.0%} (%)", color="C0")
        tw = ax.twinx()
        tw.plot(xs, [r["discovery_s"] / 60 for r in rows], "s--", color="C3")
        tw.set_ylim(0, 1.15 * max(r["discovery_s"] / 60 for r in rows))
        tw.set_ylabel("discovery time (min)", color="C3")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{res['kind']} (scope {res['scope']}), one-shot")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- block budgets and progressive pruning
# label -> (kind, prune_scope, mode, budget_kind, path scope), in table order
I9_CONFIGS = {
    "taylor (Torch-Pruning), uniform": ("taylor", "uniform", "oneshot", "", ""),
    "taylor, global": ("taylor", "global", "oneshot", "", ""),
    "taylor, progressive": ("taylor", "uniform", "progressive", "", ""),
    "path_frequency (tokens, K=20), uniform": ("path_frequency", "uniform", "oneshot", "", "tokens"),
    "path_frequency (tokens, K=20), global": ("path_frequency", "global", "oneshot", "", "tokens"),
    "path_attribution, uniform": ("path_attribution", "uniform", "oneshot", "", ""),
    "path_attribution, progressive": ("path_attribution", "uniform", "progressive", "", ""),
    "path_attribution, global (path-guided budgets)": ("path_attribution", "global", "oneshot", "", ""),
    "path_attribution, progressive in global budgets": ("path_attribution", "global", "progressive", "", ""),
    "taylor neurons in path_attribution budgets": ("taylor", "global", "oneshot", "path_attribution", ""),
    "activation_taylor, uniform": ("activation_taylor", "uniform", "oneshot", "", ""),
    "activation_taylor, global": ("activation_taylor", "global", "oneshot", "", ""),
    "random, uniform": ("random", "uniform", "oneshot", "", ""),
}


def load_i9(results: Path) -> tuple[dict, dict]:
    """`{(model, label, ratio): {seed: row}}` and `{model: dense top-1}` from every `i9_<model>_<group>.csv`."""
    table: dict[tuple, dict[int, dict]] = defaultdict(dict)
    dense = {}
    lookup = {v: k for k, v in I9_CONFIGS.items()}
    for f in sorted(results.glob("i9_*.csv")):
        model = f.stem[3:].rsplit("_", 1)[0]
        for r in csv.DictReader(open(f)):
            key = (r["kind"], r["prune_scope"], r["mode"], r.get("budget_kind", ""), r.get("scope", ""))
            if key not in lookup:
                continue
            dense[model] = float(r["dense_top1"])
            row = {"top1": float(r["top1"]), "scoring_s": float(r["scoring_seconds"] or 0),
                   "path_s": float(r["path_seconds"] or 0),
                   "finetuned_top1": float(r["finetuned_top1"]) if r.get("finetuned_top1") else None,
                   "widths": r.get("widths", ""), "file": f.name}
            old = table[(model, lookup[key], float(r["ratio"]))].get(int(r["seed"]))
            if old is not None and old["top1"] != row["top1"]:
                raise SystemExit(f"{model} {lookup[key]} seed {r['seed']}: top1 {old['top1']} in {old['file']} "
                                 f"but {row['top1']} in {f.name}")
            if old is None or row["finetuned_top1"] is not None:
                table[(model, lookup[key], float(r["ratio"]))][int(r["seed"])] = row
    return table, dense


def i9_table(table, dense) -> str:
    models = sorted(dense)
    ratios = sorted({k[2] for k in table})
    lines = ["| configuration | " + " | ".join(f"{m} {r:.0%}" for m in models for r in ratios) + " |",
             "|---|" + "---|" * (len(models) * len(ratios))]
    lines.append("| dense | " + " | ".join(f"{100 * dense[m]:.2f}" for m in models for _ in ratios) + " |")
    for name in I9_CONFIGS:
        cells = [cell([row["top1"] for row in table.get((m, name, r), {}).values()]) for m in models for r in ratios]
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def i9_finetune_table(table) -> str:
    rows = [(k, seed, row) for k, seeds in table.items() for seed, row in seeds.items()
            if row["finetuned_top1"] is not None]
    if not rows:
        return "(no fine-tuned rows)"
    lines = ["| model | configuration | ratio | seed | one-shot | after the short fine-tune |", "|---|---|---|---|---|---|"]
    for (model, name, ratio), seed, row in sorted(rows, key=lambda r: (r[0][0], r[0][2], -r[2]["finetuned_top1"])):
        lines.append(f"| {model} | {name} | {ratio:.0%} | {seed} | {100 * row['top1']:.2f} | "
                     f"{100 * row['finetuned_top1']:.2f} |")
    return "\n".join(lines)


def plot_i9(table, dense, out: Path) -> None:
    plt = pyplot()
    models = sorted(dense)
    names = [n for n in I9_CONFIGS if any(k[1] == n for k in table)]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 0.45 * len(names) + 1.6), sharey=True)
    axes = [axes] if len(models) == 1 else axes
    for ax, model in zip(axes, models):
        for j, (ratio, colour) in enumerate(zip(sorted({k[2] for k in table}), ("C0", "C3"))):
            ys, xs, errs = [], [], []
            for i, name in enumerate(names):
                seeds = table.get((model, name, ratio))
                if seeds:
                    m, sd = spread([row["top1"] for row in seeds.values()])
                    ys.append(i + 0.15 * (j - 0.5))
                    xs.append(m)
                    errs.append(sd or 0)
            ax.errorbar(xs, ys, xerr=errs, fmt="o", color=colour, capsize=3, label=f"{ratio:.0%} of FFN neurons removed")
        ax.axvline(100 * dense[model], color="k", lw=0.8, label="dense")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("one-shot CIFAR-10 top-1 (%), mean ± sd over 3 seeds")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def specialize_table(rows: list[dict]) -> str:
    """Subset top-1 (one-shot -> after the fine-tune) per subset and config, one column per ratio; then the
    mean per subset size over the subsets that every config and ratio finished (so every mean is over the
    same subsets)."""
    ratios = sorted({float(r["ratio"]) for r in rows})
    configs = list(dict.fromkeys(r["config"] for r in rows))
    subsets = sorted({(int(r["size"]), r["classes"]) for r in rows})
    cell = {(r["classes"], r["config"], float(r["ratio"])): r for r in rows}
    dense = {r["classes"]: float(r["dense_top1"]) for r in rows}

    def text(top1: list[float], ft: list[float]) -> str:
        t = f"{100 * statistics.mean(top1):.2f}"
        return t + (f" -> {100 * statistics.mean(ft):.2f}" if ft and len(ft) == len(top1) else "")

    head = "| classes | config | " + " | ".join(f"{q:.0%}" for q in ratios) + " |"
    lines = [head, "|---|---|" + "---|" * len(ratios)]
    for _, c in subsets:
        lines.append(f"| {{{c.replace('-', ', ')}}} | dense (subset logits) | "
                     + " | ".join(f"{100 * dense[c]:.2f}" for _ in ratios) + " |")
        for config in configs:
            out = []
            for q in ratios:
                r = cell.get((c, config, q))
                out.append("-" if r is None else text([float(r["top1"])],
                                                      [float(r["finetuned_top1"])] if r["finetuned_top1"] else []))
            lines.append(f"| | {config} | " + " | ".join(out) + " |")
    complete = [(n, c) for n, c in subsets if all((c, k, q) in cell for k in configs for q in ratios)]
    for n in sorted({n for n, _ in complete}):
        cs = [c for m, c in complete if m == n]
        lines += ["", f"mean over the {len(cs)} complete {n}-class subsets ({', '.join(cs)}):", "", head,
                  "|---|---|" + "---|" * len(ratios),
                  f"| {n} classes | dense (subset logits) | "
                  + " | ".join(f"{100 * statistics.mean(dense[c] for c in cs):.2f}" for _ in ratios) + " |"]
        for config in configs:
            out = []
            for q in ratios:
                rs = [cell[(c, config, q)] for c in cs]
                out.append(text([float(r["top1"]) for r in rs],
                                [float(r["finetuned_top1"]) for r in rs if r["finetuned_top1"]]))
            lines.append(f"| | {config} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def specialize_cost_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["what"] == "specialise_seconds":
            lines.append(f"- classes {{{r['classes'].replace('-', ', ')}}}: {r['from_run']:.0f} s from the full run's "
                         f"paths, {r['from_scratch']:.0f} s from scratch ({r['from_scratch'] / r['from_run']:.1f}x)")
    deploy = [r for r in rows if r["what"] == "deploy"]
    if deploy:
        lines += ["", "| config | ratio | params (dense -> pruned) | MACs ratio | onnxruntime batch 1 ms (dense -> pruned) "
                  "| batch 32 ms |", "|---|---|---|---|---|---|"]
        for r in deploy:
            lines.append(f"| {r['config']} | {r['ratio']:.0%} | {r['params_dense']:,} -> {r['params']:,} | "
                         f"{r['macs'] / r['macs_dense']:.3f} | {r['ort_b1_ms_dense']:.2f} -> {r['ort_b1_ms']:.2f} "
                         f"({r['ort_b1_ms_dense'] / r['ort_b1_ms']:.2f}x) | {r['ort_b32_ms_dense']:.1f} -> "
                         f"{r['ort_b32_ms']:.1f} ({r['ort_b32_ms_dense'] / r['ort_b32_ms']:.2f}x) |")
    return "\n".join(lines)


def variants_table(res: dict) -> str:
    """Attribution variants (`attribution_variants.py`): top-1 per variant and block budget, one column per ratio."""
    ratios = sorted({r["ratio"] for r in res["rows"]})
    cells = {(r["variant"], r["scope"], r["ratio"]): r["top1"] for r in res["rows"]}
    lines = ["| variant | budgets | " + " | ".join(f"{q:.0%}" for q in ratios) + " |", "|---|---|" + "---|" * len(ratios)]
    lines.append("| dense | | " + " | ".join(f"{100 * res['dense_top1']:.2f}" for _ in ratios) + " |")
    for variant, scope in dict.fromkeys((r["variant"], r["scope"]) for r in res["rows"]):
        lines.append(f"| {variant} | {scope} | " + " | ".join(
            f"{100 * cells[(variant, scope, q)]:.2f}" if (variant, scope, q) in cells else "-" for q in ratios) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    table = load_sweeps(results)
    if table:
        dense = next((float(r["dense_top1"]) for f in sorted(results.glob("criteria_sweep_*.csv"))
                      for r in csv.DictReader(open(f))), None)
        print(sweep_tables(table), "\n")
        print(seed_table(table), "\n")
        print(finetune_table(table), "\n")
        plot_sweep(table, dense, results / "criteria_vs_sparsity.png")
        print(f"wrote {results / 'criteria_vs_sparsity.png'}")
    i9, i9_dense = load_i9(results)
    if i9:
        print(i9_table(i9, i9_dense), "\n")
        print(i9_finetune_table(i9), "\n")
        plot_i9(i9, i9_dense, results / "budgets_progressive.png")
        print(f"wrote {results / 'budgets_progressive.png'}")
    for f in sorted(results.glob("attribution_variants_*.json")):
        print(f.name, "\n" + variants_table(json.loads(f.read_text())), "\n")
    for f in sorted(results.glob("specialize_*.csv")):
        print(f.name, "\n" + specialize_table(list(csv.DictReader(open(f)))), "\n")
    for f in sorted(results.glob("specialize_cost_*.json")):
        print(f.name, "\n" + specialize_cost_table(json.loads(f.read_text())), "\n")
    for f in sorted(results.glob("discovery_budget_*.json")):
        res = json.loads(f.read_text())
        print(budget_table(res), "\n")
        png = f.with_suffix(".png")
        plot_budget(res, png)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
