"""`prune --recipe`: recipe -> paths -> importance -> pruned model -> evaluation, each stage a
directory of the run that the next stage reads."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import dist
from .classes import class_names, resolve_classes, restrict_head
from .data import ImageDataset, collate, find_columns, labels_of, load_split, make_transform, sample_per_class
from .errors import DataError
from .finetune import evaluate
from .importance import get_criterion
from .io import write_json
from .models import load_model
from .paths.discover import DiscoverySettings, discover
from .pruning import PruneSettings, count_params_macs, load_pruned, prune_ffn, save_pruned
from .recipe import Recipe
from .run import RunDir, fingerprint, stage_key
from .stages import importance as importance_stage

STAGES = ("paths", "importance", "prune", "baseline", "evaluate", "finetune", "export", "bench", "report")


def device() -> torch.device:
    """This process's device (its own GPU under `accelerate launch`)."""
    return dist.device()


class Pipeline:
    def __init__(self, recipe: Recipe, out: str | Path, *, update: bool = False, progress: bool = True, log=print):
        self.r = recipe
        self.progress = progress and dist.is_main()
        self.log = log if dist.is_main() else (lambda msg: None)  # one voice under accelerate launch
        self.run_dir = RunDir(out, recipe.model_dump(mode="json"), update=update, log=self.log)
        self.criterion = get_criterion(recipe.importance.kind)
        self.budget_criterion = get_criterion(recipe.prune.budget_kind or recipe.importance.kind)
        self.needs_paths = self.criterion.needs_paths or self.budget_criterion.needs_paths
        # the importance stage decides the widths when scoring depends on them, or another criterion sets them
        self.importance_fixes_widths = (recipe.prune.mode == "progressive"
                                        or self.budget_criterion is not self.criterion)
        self.skipped: dict[str, list[int]] = {}
        self._classes: list[int] | None = None
        self._dense_num_classes: int | None = None
        self._splits: dict[str, tuple] = {}

    # -------------------------------------------------------------------------------- helpers
    def model(self):
        """The dense model (restricted to `prune.classes` when set), its data config, and the spec that rebuilds it."""
        m = self.r.model
        model, data_cfg, spec = load_model(m.name, pretrained=m.pretrained, **m.kwargs)
        self._dense_num_classes = model.num_classes
        classes = self.classes()
        if classes is not None:
            restrict_head(model, classes)
            spec = dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": len(classes)})
        return model, data_cfg, spec

    def classes(self) -> list[int] | None:
        """`prune.classes` as original class ids (None: every class)."""
        if self.r.prune.classes is None:
            return None
        if self._classes is None:
            ds, _, lab = self.split(self.r.data.train_split)
            self._classes = resolve_classes(self.r.prune.classes, self.dense_num_classes, class_names(ds, lab))
        return self._classes

    @property
    def dense_num_classes(self) -> int:
        if self._dense_num_classes is None:
            self.model()
        return self._dense_num_classes

    def split(self, split: str):
        """A split of the recipe's dataset with its image and label column names (loaded once per run)."""
        if split not in self._splits:
            d = self.r.data
            ds = load_split(d.source, split)
            self._splits[split] = (ds, *find_columns(ds, d.image_column, d.label_column))
        return self._splits[split]

    def dataset(self, split: str, data_cfg, rows: list[int]) -> ImageDataset:
        """`rows` of a split as model inputs; with `prune.classes`, labels re-indexed to the kept classes."""
        d = self.r.data
        ds, img, lab = self.split(split)
        classes = self.classes()
        label_map = None if classes is None else {c: i for i, c in enumerate(classes)}
        return ImageDataset(ds, make_transform(data_cfg), img, lab, split, rows, self.dense_num_classes, d.skip_bad,
                            label_map)

    def rows(self, split: str) -> list[int]:
        """Every row of a split, or with `prune.classes` the rows of those classes."""
        ds, _, lab = self.split(split)
        classes = self.classes()
        if classes is None:
            return list(range(len(ds)))
        keep = set(classes)
        return [i for i, y in enumerate(labels_of(ds, lab)) if y in keep]

    def loader(self, split: str, data_cfg, rows_wanted: int | None, seed: int, shard: bool = False):
        """Batches `(x, y, rows, bad)` of `rows_wanted` rows drawn with `seed` (all rows if None); with
        `shard`, only this process's share of them under `accelerate launch`."""
        d = self.r.data
        rows = self.rows(split)
        if rows_wanted is not None and rows_wanted < len(rows):
            rows = sorted(random.Random(seed).sample(rows, rows_wanted))
        if not rows:
            what = "" if self.classes() is None else f" for prune.classes {self.r.prune.classes}"
            raise DataError(f"split {split!r} of {d.source} has no images{what}")
        return self._loader(self.dataset(split, data_cfg, dist.shard(rows) if shard else rows))

    def path_loader(self, data_cfg, shard: bool = False):
        """The class-balanced images of the paths (`paths.images_per_class` of every class of the train split,
        drawn with `paths.seed`): the same images discovery uses (only the kept classes' with `prune.classes`),
        for criteria that score them themselves."""
        d, p = self.r.data, self.r.paths
        ds, _, lab = self.split(d.train_split)
        rows = sample_per_class(labels_of(ds, lab), p.images_per_class, self.dense_num_classes, p.seed,
                                split=d.train_split, allow_empty=d.skip_bad)
        if self.classes() is not None:
            rows = sorted(set(rows) & set(self.rows(d.train_split)))
        return self._loader(self.dataset(d.train_split, data_cfg, dist.shard(rows) if shard else rows))

    def _loader(self, dataset):
        d = self.r.data
        return torch.utils.data.DataLoader(dataset, batch_size=d.batch_size, num_workers=d.num_workers,
                                           collate_fn=collate)

    def batches(self, loader, key: str):
        """Non-empty `(x, y)` batches on the device; bad rows are counted under `key`."""
        dev = device()
        for x, y, rows, bad in loader:
            self.skipped.setdefault(key, []).extend(b.row for b in bad)
            if len(y):
                yield x.to(dev), y.to(dev)

    # -------------------------------------------------------------------------------- stages
    def run(self, force: set[str] = frozenset()) -> dict:
        r, rd = self.r, self.run_dir
        from .models import resolve_model_dir

        model_dir = resolve_model_dir(r.model.name)
        model_in = {"model": r.model.model_dump(mode="json"),
                    "model_files": fingerprint(str(model_dir)) if model_dir else r.model.name,
                    "data": r.data.model_dump(include={"source", "image_column", "label_column", "skip_bad"}),
                    "data_files": fingerprint(r.data.source)}
        eval_in = {**model_in, "eval": r.data.model_dump(include={"eval_split", "eval_images"})}
        reads = []
        if self.needs_paths:
            rd.run("paths", {**model_in, "split": r.data.train_split, "paths": r.paths.model_dump()},
                   self.build_paths, force="paths" in force, distributed=True)
            reads = ["paths"]
        imp_in = {**model_in, "split": r.data.train_split, "importance": r.importance.model_dump(), "reads": reads}
        if self.criterion.uses_path_images or self.budget_criterion.uses_path_images:
            imp_in["paths"] = r.paths.model_dump(include={"images_per_class", "steps", "seed", "batch_size"})
        if self.importance_fixes_widths:
            imp_in["prune"] = r.prune.model_dump(include={"ratio", "scope", "max_layer_ratio", "round_to", "mode",
                                                          "budget_kind"})
        rd.run("importance", imp_in, lambda out: importance_stage.build(self, out), force="importance" in force,
               distributed=True)
        rd.run("prune", {**model_in, "prune": r.prune.model_dump(), "reads": ["importance"]},
               self.build_prune, force="prune" in force)
        rd.run("baseline", eval_in, self.build_baseline, force="baseline" in force, distributed=True)
        rd.run("evaluate", {**eval_in, "reads": ["prune"]}, self.build_evaluate, force="evaluate" in force,
               distributed=True)
        final = ["prune"]
        if r.finetune.epochs > 0:
            rd.run("finetune", {**eval_in, "split": r.data.train_split, "finetune": r.finetune.model_dump(),
                                "reads": ["prune"]}, self.build_finetune, force="finetune" in force, distributed=True)
            final = ["finetune"]
        after = list(final)
        if r.export.enabled:
            rd.run("export", {**eval_in, "export": r.export.model_dump(), "reads": final}, self.build_export,
                   force="export" in force)
            after.append("export")
        if r.bench.enabled:
            rd.run("bench", {"bench": r.bench.model_dump(), "reads": after}, self.build_bench, force="bench" in force)
            after.append("bench")
        metrics = self.metrics()
        if dist.is_main():
            write_json(rd.root / "summary.json", metrics)
        rd.run("report", {"report": r.report.model_dump(), "reads": ["evaluate", "baseline", *after],
                          "metrics": stage_key(metrics)}, lambda out: self.build_report(out, metrics),
               force="report" in force)
        return metrics

    def build_paths(self, out: Path) -> dict:
        r = self.r
        p = r.paths
        # for pruning, "auto" means every token: structural removal cuts a neuron at all tokens, and CLS-only
        # paths measured at random level (benchmarks/RESULTS.md); `prune paths` keeps the paper's CLS default
        scope = "tokens" if p.scope == "auto" else p.scope
        settings = DiscoverySettings(method=p.method, steps=p.steps, top_k=p.top_k, scope=scope, target=p.target,
                                     images_per_class=p.images_per_class, batch_size=p.batch_size, seed=p.seed)
        summary = discover(r.model.name, r.data.source, r.data.train_split, settings, out,
                           pretrained=r.model.pretrained, model_kwargs=r.model.kwargs,
                           image_column=r.data.image_column, label_column=r.data.label_column,
                           skip_bad=r.data.skip_bad, progress=self.progress)
        return {"images": summary["images"], "mean_jas": summary["mean_jas"], "skipped_rows": summary["skipped_rows"]}

    def build_prune(self, out: Path) -> dict:
        p = self.r.prune
        model, data_cfg, spec = self.model()
        imp = load_file(self.run_dir.path("importance") / "importance.safetensors")
        example = torch.randn(1, *data_cfg.input_size)
        params0, macs0 = count_params_macs(model, example)
        dense_widths = [b.mlp.fc1.out_features for b in model.blocks]
        settings = PruneSettings(ratio=p.ratio, scope=p.scope, max_layer_ratio=p.max_layer_ratio,
                                 round_to=p.round_to, compensate=p.compensate)
        keep = imp["keep"].tolist() if "keep" in imp else None  # the importance stage fixed the widths
        kept = prune_ffn(model, imp["scores"], settings, example, act_mean=imp["act_mean"], keep=keep)
        params1, macs1 = count_params_macs(model, example)
        save_pruned(model, out, spec, kept, dense_widths, data_cfg.as_dict(), self.classes())
        info = {"params_dense": params0, "params_pruned": params1, "macs_dense": macs0, "macs_pruned": macs1,
                "dense_widths": dense_widths, "widths": [len(k) for k in kept],
                "ffn_neurons_removed": 1 - sum(len(k) for k in kept) / sum(dense_widths)}
        write_json(out / "prune.json", info)
        return info

    def accuracy(self, model, data_cfg, name: str) -> dict:
        """Top-1/top-5 on the evaluation images; under `accelerate launch` each process takes a share."""
        r = self.r
        loader = self.loader(r.data.eval_split, data_cfg, r.data.eval_images, seed=0, shard=True)
        model.to(device())
        local = evaluate(model, self.batches(loader, "eval"), progress=self.progress)
        counts = torch.tensor([round(local["top1"] * local["images"]), round(local["top5"] * local["images"]),
                               local["images"]], dtype=torch.float64)
        c1, c5, n = dist.reduce_sum(counts).tolist()
        acc = {"top1": c1 / max(1, n), "top5": c5 / max(1, n), "images": int(n),
               "skipped_rows": sorted(set(dist.gather_lists(self.skipped.pop("eval", []))))}
        self.log(f"[evaluate] {name}: top1 {acc['top1']:.4f} top5 {acc['top5']:.4f} on {acc['images']} images")
        return acc

    def build_baseline(self, out: Path) -> dict:
        """Accuracy of the dense model on the evaluation split (shared by every pruning of it)."""
        dense, data_cfg, _ = self.model()
        info = {"dense": self.accuracy(dense, data_cfg, "dense")}
        if dist.is_main():
            write_json(out / "metrics.json", info)
        return info

    def build_evaluate(self, out: Path) -> dict:
        _, data_cfg, _ = self.model()
        pruned, _ = load_pruned(self.run_dir.path("prune"))
        info = {"pruned": self.accuracy(pruned, data_cfg, "pruned")}
        if dist.is_main():
            write_json(out / "metrics.json", info)
        return info

    def final_model_dir(self) -> Path:
        """The model the later stages ship: fine-tuned if the recipe fine-tunes, else pruned."""
        ft = self.run_dir.path("finetune")
        return ft if self.r.finetune.epochs > 0 and (ft / "structure.json").is_file() else self.run_dir.path("prune")

    def build_finetune(self, out: Path) -> dict:
        from .finetune import TrainConfig, train

        r, f = self.r, self.r.finetune
        dense, data_cfg, _ = self.model()
        model, structure = load_pruned(self.run_dir.path("prune"))
        train_loader = self.loader(r.data.train_split, data_cfg, f.train_images, f.seed)
        cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                          warmup_epochs=f.warmup_epochs, label_smoothing=f.label_smoothing, grad_clip=f.grad_clip,
                          grad_accum=f.grad_accum, mixed_precision=f.mixed_precision, num_workers=r.data.num_workers,
                          seed=f.seed, distill_alpha=f.distill.alpha if f.distill else 0.0,
                          distill_temperature=f.distill.temperature if f.distill else 2.0)
        ckpt = self.run_dir.root / ".checkpoints" / f"finetune-{self.run_dir.keys['finetune']}"
        if (ckpt / "last" / "state.json").is_file():
            self.log(f"[finetune] resuming from {ckpt}")
        history = train(model, train_loader.dataset, None, cfg, teacher=dense if f.distill else None,
                        checkpoint_dir=ckpt, progress=self.progress)
        model = model.cpu().eval()
        from .models import ModelSpec

        spec = ModelSpec(structure["architecture"], structure["model_kwargs"])
        if dist.is_main():
            save_pruned(model, out, spec, structure["kept"], structure["dense_widths"], structure["data_config"],
                        structure.get("classes"))
        dist.barrier()
        saved, _ = load_pruned(out)  # measure what was saved, in float32, outside any autocast wrapper
        acc = self.accuracy(saved, data_cfg, "finetuned")
        info = {"finetuned": acc, "epochs": f.epochs, "train_images": len(train_loader.dataset),
                "distill": f.distill.model_dump() if f.distill else None}
        if dist.is_main():
            write_json(out / "history.json", history)
            write_json(out / "metrics.json", info)
            import shutil

            shutil.rmtree(ckpt, ignore_errors=True)
        return info

    def eval_images(self, data_cfg, n: int = 8) -> torch.Tensor:
        loader = self.loader(self.r.data.eval_split, data_cfg, self.r.data.eval_images, seed=0)
        xs = []
        for x, _ in self.batches(loader, "export"):
            xs.append(x.cpu())
            if sum(len(t) for t in xs) >= n:
                break
        return torch.cat(xs)[:n]

    def build_export(self, out: Path) -> dict:
        from .export import export_checked

        e = self.r.export
        dense, data_cfg, _ = self.model()
        final, _ = load_pruned(self.final_model_dir())
        images = self.eval_images(data_cfg)
        info = {}
        classes = self.classes()
        metadata = None if classes is None else {"prune.classes": json.dumps(classes)}
        for name, model in (("dense", dense), ("pruned", final)):
            meta = export_checked(model.cpu(), images, out / f"{name}.onnx", opset=e.opset, atol=e.atol,
                                  metadata=metadata)
            meta["path"] = f"{name}.onnx"
            info[name] = meta
            self.log(f"[export] {name}.onnx: max |ORT - PyTorch| "
                     f"{max(v['max_abs_diff'] for k, v in meta['parity'].items() if k.startswith('batch_')):.2e}")
        write_json(out / "export.json", info)
        return info

    def build_bench(self, out: Path) -> dict:
        from .bench import cuda_provider_available, measure, ort_runner, threads_info, torch_runner

        b = self.r.bench
        if b.threads:
            torch.set_num_threads(b.threads)
        dense, data_cfg, _ = self.model()
        final, _ = load_pruned(self.final_model_dir())
        latency = {}
        if b.pytorch:
            latency["pytorch"] = measure({"dense": torch_runner(dense), "pruned": torch_runner(final)},
                                         data_cfg.input_size, b.batch_sizes, b.warmup, b.repeats)
        if b.onnxruntime:
            exp = self.run_dir.path("export")
            engines = [("onnxruntime", "CPUExecutionProvider")]
            if cuda_provider_available():
                engines.append(("onnxruntime_cuda", "CUDAExecutionProvider"))
            for engine, provider in engines:
                latency[engine] = measure(
                    {"dense": ort_runner(exp / "dense.onnx", b.threads, provider),
                     "pruned": ort_runner(exp / "pruned.onnx", b.threads, provider)},
                    data_cfg.input_size, b.batch_sizes, b.warmup, b.repeats)
        info = {"latency": latency, "warmup": b.warmup, "repeats": b.repeats,
                "threads": b.threads or torch.get_num_threads(), **threads_info()}
        write_json(out / "bench.json", info)
        return {"threads": info["threads"]}

    def build_report(self, out: Path, metrics: dict) -> dict:
        from .report import write_report

        stats = self.run_dir.path("paths") / "stats.safetensors" if self.needs_paths else None
        m = write_report(metrics, out, stats, self.r.report.heatmap_classes)
        self.log(f"[report] {len(m['plots'])} plots and report.md written")
        return {"plots": m["plots"]}

    def metrics(self) -> dict:
        """Everything the run measured, from the stage files."""
        rd = self.run_dir
        read = lambda stage, f: json.loads((rd.path(stage) / f).read_text())  # noqa: E731
        prune = read("prune", "prune.json")
        metrics = {**read("baseline", "metrics.json"), **read("evaluate", "metrics.json")}
        summary = {
            "recipe": self.r.name, "model": self.r.model.name, "data": self.r.data.source,
            "importance": self.r.importance.kind, "prune": self.r.prune.model_dump(),
            "classes": json.loads((rd.path("prune") / "structure.json").read_text()).get("classes"),
            "params": {"dense": prune["params_dense"], "pruned": prune["params_pruned"]},
            "macs": {"dense": prune["macs_dense"], "pruned": prune["macs_pruned"]},
            "ffn_widths": {"dense": prune["dense_widths"], "pruned": prune["widths"]},
            "accuracy": {"dense": metrics["dense"], "pruned": metrics["pruned"]},
            "skipped_rows": {"eval": sorted(set(metrics["dense"].pop("skipped_rows", []) + metrics["pruned"].pop("skipped_rows", []))),
                             "calibration": read("importance", "importance.json").get("skipped_rows", [])},
        }
        if self.needs_paths:
            summary["paths"] = read("paths", "summary.json")
            summary["skipped_rows"]["paths"] = summary["paths"].get("skipped_rows", [])
        if self.r.finetune.epochs > 0:
            ft = read("finetune", "metrics.json")
            ft["finetuned"].pop("skipped_rows", None)
            summary["accuracy"]["finetuned"] = ft.pop("finetuned")
            summary["finetune"] = ft
        if self.r.export.enabled:
            summary["onnx"] = read("export", "export.json")
        if self.r.bench.enabled:
            bench = read("bench", "bench.json")
            summary["latency"] = bench.pop("latency")
            summary["bench"] = bench
        return summary
