"""Heads and FFN neurons in one MACs budget, against FFN only, heads only and Torch-Pruning's ViT recipe.

Every method removes a share of the dense model's MACs (`--targets`, counted by `prune.budget.count_params_macs`):
  ffn    prune's FFN-only global budget (activation_taylor scores, per-block cap 0.9: today's default)
  heads  attention heads only (activation_taylor scores, cap 1.0)
  both   heads and FFN neurons in one budget ranked by score per MAC (cap 1.0: a block may become a skip)
  recipe_cut  heads and FFN neurons in one budget with the shipped CIFAR recipe's per-block caps
         (`prune.max_layer_ratio` of cifar10_vit_tiny_50pct.yaml: every block keeps two thirds of its heads)
  recipe the same cut, then the recipe's re-fits: every branch's output layer by least squares to the dense
         stream (`prune.reconstruct_images` images, CLS share `reconstruct_prefix_share`), then the classifier
         to the dense logits (`reconstruct_head_images`): the recipe's one-shot steps on this script's scores
  tp     Torch-Pruning's own ViT recipe: MetaPruner with GroupTaylorImportance (cross-entropy gradients of
         the same calibration images), global_pruning=True, isomorphic=True, prune_num_heads=True,
         prune_head_dims=False, head_pruning_ratio = pruning_ratio, classifier ignored; its pruning_ratio is
         found by bisection so that its MACs match the target (it also prunes the embedding width)
Phases (`--phases`; each writes its rows as they arrive, `--resume` keeps rows already written):
  oneshot  top-1 on the evaluation images for every (seed, target, method); seed 0's models are exported to
           OUT/onnx/ for the latency phase, prune's own also saved (safetensors + structure.json) to OUT/models/
  export   re-make seed 0's OUT/onnx/ and OUT/models/ where missing (they are not committed: large)
  latency  onnxruntime CPU latency at batch 1 and 32 of the dense model and every exported model, in one
           alternating run (give it the machine to itself)
  recover  the same recovery for every method at `--recover-targets` (seed 0): distillation from the dense
           model, keep-best on a held-out slice of the training split, then top-1 on the evaluation images
  plot     accuracy vs onnxruntime latency at batch 1 and 32 (pareto.png)
  table    the markdown table of RESULTS.md (table.md): mean and spread over seeds, speed-ups, recovery

    python benchmarks/heads_budget.py --model ../shared/models/vit_tiny_cifar10 --data ../shared/data/cifar10 \\
        --out benchmarks/results/heads_budget_vit_tiny_cifar10
    python benchmarks/heads_budget.py --quick --out /tmp/hb   # the embedded digits model, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from common import read_csv, split_images, top1, write_csv

METHODS = ("ffn", "heads", "both", "recipe_cut", "recipe", "tp")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-vit")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--targets", default="0.3,0.5,0.6,0.7", help="shares of the dense MACs to remove")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the calibration images")
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--eval-images", type=int, default=None, help="default: the whole evaluation split")
    ap.add_argument("--phases", default="oneshot,latency,recover,plot")
    ap.add_argument("--recover-targets", default="0.5,0.6")
    ap.add_argument("--recover-images", type=int, default=10000, help="training images of the recovery epoch")
    ap.add_argument("--recover-epochs", type=int, default=1)
    ap.add_argument("--recover-lrs", default="5e-4", help="comma-separated learning rates of the recovery")
    ap.add_argument("--recover-methods", default=None, help="methods to recover (default: --methods)")
    ap.add_argument("--recover-precision", default="no", choices=["no", "bf16", "auto"],
                    help="the recovery's mixed precision (auto: bf16 where the hardware has it; RESULTS.md section 15)")
    ap.add_argument("--holdout", type=int, default=2500, help="held-out training images that pick the best weights")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--quick", action="store_true", help="digits model, tiny settings (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.targets, args.seeds, args.calibration_images, args.repeats = "0.5", "0", 64, 3
        args.recover_targets, args.recover_images, args.holdout = "0.5", 256, 64
        args.recover_methods = args.recover_methods or "both,tp"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, out)
    for phase in args.phases.split(","):
        getattr(bench, phase)()


def _batches(*tensors, size: int = 64) -> list[tuple]:
    """Aligned tensors cut into tuples of `size` rows: the loader shape prune's scorers and re-fits take."""
    n = len(tensors[0])
    return [tuple(t[s:s + size] for t in tensors) for s in range(0, n, size)]


class Bench:
    def __init__(self, args, out: Path):
        from prune.models import load_model

        self.args, self.out = args, out
        self.dense, self.data_cfg, self.spec = load_model(args.model)
        self.example = torch.randn(1, *self.data_cfg.input_size)
        self.targets = [float(t) for t in args.targets.split(",")]
        self.methods = args.methods.split(",")
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self._data = {}
        from prune.recipe import load_recipe

        self.shipped = load_recipe("cifar10_vit_tiny_50pct.yaml").prune  # the caps and re-fits of recipe(_cut)
        if self.shipped.reconstruct != "lstsq" or self.shipped.scope != "global" or self.shipped.units != ["ffn", "heads"]:
            raise SystemExit("heads_budget's recipe methods assume the shipped CIFAR recipe's global ffn+heads cut "
                             "and lstsq re-fit; update Bench.refit")

    # ------------------------------------------------------------------------------------- data
    def images(self, split: str, n: int | None, seed: int, exclude=()):
        """`n` rows of a split drawn with `seed` (all if None, less `exclude`) as tensors (decoded once)."""
        key = (split, n, seed, tuple(exclude))
        if key not in self._data:
            self._data[key] = split_images(self.args.data, split, self.data_cfg, int(self.dense.num_classes), n, seed,
                                           exclude)
        return self._data[key]

    def top1(self, model) -> float:
        x, y = self.images(self.args.eval_split, self.args.eval_images, 0)
        model.eval()
        return top1(model, x, y)

    def calibration(self, seed: int):
        return _batches(*self.images(self.args.train_split, self.args.calibration_images, seed))

    # ---------------------------------------------------------------------------------- methods
    def prepare(self, seed: int) -> dict:
        """Per seed: prune's one-pass first-order tables (both kinds) and the dense model's Taylor gradients."""
        from prune.gates import first_order_tables
        from prune.units import FFN, HEADS

        t = time.perf_counter()
        tables = first_order_tables(self.dense, [FFN, HEADS], lambda: self.calibration(seed),
                                    int(self.dense.num_classes), objective="logprob")
        scoring = time.perf_counter() - t
        graded = copy.deepcopy(self.dense)
        graded.zero_grad()
        for x, y in self.calibration(seed):  # Torch-Pruning's example: mean cross-entropy per batch, summed grads
            torch.nn.functional.cross_entropy(graded(x), y).backward()
        return {"tables": tables, "graded": graded, "scoring_seconds": scoring, "seed": seed}

    def prune(self, method: str, target: float, prep: dict):
        """(pruned model, kept dict or None) for one method at one MACs target; None if unreachable."""
        from prune.errors import ConfigError
        from prune.budget import plan_keep
        from prune.pruning import prune_units
        from prune.recipe import PruneCfg
        from prune.units import FFN, HEADS

        if method == "tp":
            return self.tp_prune(target, prep["graded"]), None
        units = [FFN] if method == "ffn" else [HEADS] if method == "heads" else [FFN, HEADS]
        if method.startswith("recipe"):  # every prune setting of the shipped recipe, at this target
            settings = self.shipped.model_copy(update={"macs_ratio": target})
        else:
            settings = PruneCfg(scope="global", macs_ratio=target, max_layer_ratio=0.9 if method == "ffn" else 1.0)
        model = copy.deepcopy(self.dense)
        try:
            keep = plan_keep(model, units, prep["tables"], settings, self.example)
        except ConfigError:
            return None, None
        kept = {u.kind: prune_units(model, u, prep["tables"][u.kind], settings, self.example, keep=keep[u.kind])
                for u in units}
        if method == "recipe":
            self.refit(model, prep["seed"])
        return model, kept

    def refit(self, model, seed: int) -> None:
        """The shipped recipe's re-fits, in place: branches to the dense stream, then the classifier to the logits."""
        from prune.reconstruct import prefix_weight_for, refit, refit_head

        p = self.shipped
        x, _ = self.images(self.args.train_split, p.reconstruct_images, seed + 1)
        refit(model, self.dense, _batches(x), ridge=p.reconstruct_ridge,
              prefix_weight=prefix_weight_for(model, p.reconstruct_prefix_share))
        if p.reconstruct_head_images:
            x, _ = self.images(self.args.train_split, p.reconstruct_head_images, seed + 2)
            refit_head(model, self.dense, _batches(x), ridge=p.reconstruct_ridge)

    def tp_prune(self, target: float, graded):
        """Torch-Pruning's ViT recipe, its ratio bisected to remove at least `target` of the MACs."""
        from prune.budget import count_params_macs

        _, dense = count_params_macs(self.dense, self.example)
        lo, hi, best = 0.0, 0.95, None
        for _ in range(14):
            mid = (lo + hi) / 2
            model = tp_recipe(graded, mid, self.example)
            removed = 1 - count_params_macs(model, self.example)[1] / dense
            if removed >= target:
                best, hi = model, mid
            else:
                lo = mid
            if best is not None and hi - lo < 2e-3:
                break
        return best

    # ----------------------------------------------------------------------------------- phases
    def oneshot(self):
        from prune.export import export_onnx
        from prune.budget import count_params_macs
        from prune.units import FFN, HEADS

        path = self.out / "oneshot.csv"
        rows = read_csv(path) if self.args.resume else []
        done = {(r["seed"], r["target"], r["method"]) for r in rows}
        p0, m0 = count_params_macs(self.dense, self.example)
        dense_top1 = self.top1(self.dense)
        if not (self.out / "onnx" / "dense.onnx").is_file():
            export_onnx(self.dense, self.example, self.out / "onnx" / "dense.onnx")
        for seed in self.seeds:
            prep = None
            for target in self.targets:
                for method in self.methods:
                    if (str(seed), str(target), method) in done:
                        continue
                    prep = prep or self.prepare(seed)
                    model, kept = self.prune(method, target, prep)
                    row = {"model": Path(self.args.model).name, "method": method, "target": target, "seed": seed,
                           "dense_top1": dense_top1, "dense_macs": m0, "dense_params": p0}
                    if model is None:
                        row.update(top1="", macs="", params="", macs_removed="", note="unreachable under the caps")
                    else:
                        p, m = count_params_macs(model, self.example)
                        row.update(top1=self.top1(model), macs=m, params=p, macs_removed=1 - m / m0, note="",
                                   ffn=" ".join(map(str, FFN.widths(model))) if method != "tp" else "",
                                   heads=" ".join(map(str, HEADS.widths(model))) if method != "tp" else "",
                                   embed_dim=int(model.pos_embed.shape[-1]),
                                   scoring_seconds=prep["scoring_seconds"])
                        if seed == self.seeds[0]:
                            self._save(f"{method}_{target}", model, kept)
                    rows.append(row)
                    write_csv(path, rows)
                    print(f"seed {seed} target {target:.2f} {method:5s} top1 {row['top1'] if row['top1'] == '' else format(row['top1'], '.4f')}"
                          f" (dense {dense_top1:.4f}) {row['note']}", flush=True)

    def _save(self, name: str, model, kept) -> None:
        """The ONNX file (latency phase) and, for prune's own methods, the pruned-model directory."""
        from prune.export import export_onnx
        from prune.checkpoint import save_pruned
        from prune.units import get_unit

        export_onnx(model, self.example, self.out / "onnx" / f"{name}.onnx")
        if kept is not None:
            save_pruned(model, self.out / "models" / name, self.spec, kept,
                        {u: get_unit(u).widths(self.dense) for u in kept}, self.data_cfg.as_dict())

    def export(self):
        """Re-make the first seed's ONNX files and model directories that are missing (they are not committed)."""
        from prune.export import export_onnx

        if not (self.out / "onnx" / "dense.onnx").is_file():
            export_onnx(self.dense, self.example, self.out / "onnx" / "dense.onnx")
        prep = None
        for target in self.targets:
            for method in self.methods:
                name = f"{method}_{target}"
                if (self.out / "onnx" / f"{name}.onnx").is_file():
                    continue
                prep = prep or self.prepare(self.seeds[0])
                model, kept = self.prune(method, target, prep)
                if model is not None:
                    self._save(name, model, kept)
                    print(f"exported {name}", flush=True)

    def latency(self):
        from prune.bench import measure, ort_runner

        files = sorted((self.out / "onnx").glob("*.onnx"))
        runners = {f.stem: ort_runner(f, self.args.threads) for f in files}
        res = measure(runners, tuple(self.data_cfg.input_size), (1, 32), warmup=3, repeats=self.args.repeats)
        rows = []
        for name, per in res.items():
            for b, r in per.items():
                rows.append({"model": Path(self.args.model).name, "artifact": name, "batch": b, **r,
                             "speedup": res["dense"][b]["median_ms"] / r["median_ms"]})
        write_csv(self.out / "latency.csv", rows)
        for r in rows:
            print(f"{r['artifact']:12s} b{r['batch']:>2s} {r['median_ms']:8.2f} ms  x{r['speedup']:.2f}")

    def recover(self):
        from prune.finetune import TrainConfig, recovery_summary, train

        path = self.out / "recover.csv"
        rows = read_csv(path) if self.args.resume else []
        done = {(r["target"], r["method"], r["lr"]) for r in rows}
        prep = None
        a = self.args
        held_x, held_y = self.images(a.train_split, a.holdout, 12345)
        held_rows = set(self._held_rows())
        train_x, train_y = self.images(a.train_split, a.recover_images, 0, exclude=tuple(sorted(held_rows)))
        methods = (a.recover_methods or ",".join(self.methods)).split(",")
        for lr, target, method in ((lr, t, m) for lr in a.recover_lrs.split(",")
                                   for t in map(float, a.recover_targets.split(",")) for m in methods):
            if (str(target), method, str(float(lr))) in done:
                continue
            prep = prep or self.prepare(self.seeds[0])
            model, _ = self.prune(method, target, prep)
            if model is None:
                continue
            oneshot = self.top1(model)
            cfg = TrainConfig(epochs=a.recover_epochs, batch_size=128, lr=float(lr), weight_decay=0.05,
                              warmup_epochs=0.1, seed=0, distill_alpha=0.5, distill_temperature=2.0,
                              mixed_precision=a.recover_precision)
            t = time.perf_counter()
            history = train(model, Rows(train_x, train_y), Rows(held_x, held_y), cfg, teacher=self.dense,
                            progress=False, keep_best=True)
            rec = recovery_summary(history)
            row = {"model": Path(a.model).name, "method": method, "target": target, "oneshot_top1": oneshot,
                   "recovered_top1": self.top1(model.cpu()), "holdout_oneshot": rec["oneshot"],
                   "holdout_best": rec["best"], "holdout_last": rec["last"], "best_epoch": rec["best_epoch"],
                   "train_images": len(train_y), "epochs": a.recover_epochs, "lr": float(lr),
                   "precision": history[-1].get("precision", ""),
                   "seconds": time.perf_counter() - t}
            rows.append(row)
            write_csv(path, rows)
            print(f"recover {method:5s} target {target:.2f} lr {float(lr):g}: one-shot {oneshot:.4f} -> {row['recovered_top1']:.4f} "
                  f"(held-out one-shot {rec['oneshot']:.4f}, best {rec['best']:.4f}, last {rec['last']:.4f})", flush=True)

    def _held_rows(self):
        import random

        from prune.data import load_split

        n = len(load_split(self.args.data, self.args.train_split))
        return sorted(random.Random(12345).sample(range(n), self.args.holdout))

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        one = read_csv(self.out / "oneshot.csv")
        lat = {(r["artifact"], r["batch"]): float(r["median_ms"]) for r in read_csv(self.out / "latency.csv")}
        rec = {}
        for r in read_csv(self.out / "recover.csv"):  # the best learning rate of each (method, target)
            key = (r["method"], r["target"])
            rec[key] = max(rec.get(key, 0.0), float(r["recovered_top1"]))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, b in zip(axes, ("1", "32")):
            dense_ms = lat[("dense", b)]
            ax.scatter([1.0], [float(one[0]["dense_top1"]) * 100], marker="*", s=120, color="k", label="dense")
            for method in self.methods:
                pts = []
                for t in self.targets:
                    accs = [float(r["top1"]) for r in one if r["method"] == method and float(r["target"]) == t and r["top1"]]
                    key = (f"{method}_{t}", b)
                    if accs and key in lat:
                        pts.append((dense_ms / lat[key], 100 * sum(accs) / len(accs), rec.get((method, str(t)))))
                if pts:
                    line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{method} one-shot")[0]
                    rp = [(p[0], 100 * p[2]) for p in pts if p[2] is not None]
                    if rp:
                        ax.plot([p[0] for p in rp], [p[1] for p in rp], "s--", color=line.get_color(),
                                label=f"{method} recovered")
            ax.set_xlabel(f"onnxruntime CPU speed-up over dense, batch {b}")
            ax.set_ylabel("top-1 (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{Path(self.args.model).name}: accuracy vs latency (one-shot mean of seeds; recovered seed 0)")
        fig.savefig(self.out / "pareto.png", dpi=110, bbox_inches="tight")
        print(f"wrote {self.out / 'pareto.png'}")

    def table(self):
        import statistics

        one = read_csv(self.out / "oneshot.csv")
        lat = {(r["artifact"], r["batch"]): float(r["speedup"]) for r in read_csv(self.out / "latency.csv")}
        rec = read_csv(self.out / "recover.csv")
        lines = [f"Model `{Path(self.args.model).name}`, dense top-1 {float(one[0]['dense_top1']) * 100:.2f}%, "
                 f"{int(one[0]['dense_macs']):,} MACs.", "",
                 "| MACs removed (target) | method | one-shot top-1 (mean of seeds, min-max) | MACs removed | ORT b1 speed-up | "
                 "ORT b32 speed-up | heads kept per block | recovered top-1 (best lr) |", "|---|---|---|---|---|---|---|---|"]
        for t in self.targets:
            for m in self.methods:
                rows = [r for r in one if r["method"] == m and float(r["target"]) == t]
                if not rows:
                    continue
                if not rows[0]["top1"]:
                    lines.append(f"| {t:.2f} | {m} | unreachable under the caps | | | | | |")
                    continue
                accs = [float(r["top1"]) * 100 for r in rows]
                key = f"{m}_{t}"
                rr = [float(r["recovered_top1"]) * 100 for r in rec if r["method"] == m and float(r["target"]) == t]
                heads = rows[0].get("heads") or f"embed {rows[0].get('embed_dim')}"
                lines.append(f"| {t:.2f} | {m} | {statistics.mean(accs):.2f} ({min(accs):.2f}-{max(accs):.2f}, n={len(accs)}) | "
                             f"{float(rows[0]['macs_removed']):.3f} | {lat.get((key, '1'), float('nan')):.2f}x | "
                             f"{lat.get((key, '32'), float('nan')):.2f}x | {heads} | {f'{max(rr):.2f}' if rr else ''} |")
        (self.out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


class Rows(torch.utils.data.Dataset):
    """Preloaded `(x, y, row)` samples for `prune.finetune.train`."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


def tp_recipe(graded, ratio: float, example):
    """Torch-Pruning's timm ViT example (global Taylor, isomorphic groups, whole heads) on a copy of `graded`
    (a dense model holding the calibration gradients), then the attention modules' head counts updated."""
    import timm
    import torch_pruning as tp

    from prune.criteria import unwrapped

    model = copy.deepcopy(graded)
    for p, q in zip(model.parameters(), graded.parameters()):
        p.grad = None if q.grad is None else q.grad.clone()
    num_heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, timm.layers.Attention)}
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=True, isomorphic=True,
        pruning_ratio=ratio, ignored_layers=[model.head], num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=ratio, unwrapped_parameters=unwrapped(model))
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, timm.layers.Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.attn_dim = m.qkv.out_features // 3
            m.head_dim = m.attn_dim // m.num_heads
    model.zero_grad(set_to_none=True)
    return model.eval()


if __name__ == "__main__":
    main()
