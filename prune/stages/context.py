"""The run context: what every stage of one run shares, loaded once (recipe, run directory, the dense
model, dataset splits, classes) and the services stages call (loaders, batches, accuracy, the models
a run ships)."""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Callable

import torch

from .. import dist
from ..artifacts import shipped
from ..card import ModelCard
from ..checkpoint import load_pruned
from ..classes import class_names, resolve_classes, restrict_head
from ..criteria import Criterion, scorers
from ..data import ImageDataset, Split, collate, load_images, open_split, sample_per_class
from ..errors import DataError
from ..finetune import evaluate
from ..models import load_model, resolve_model_dir
from ..recipe import Recipe
from ..run import RunDir, fingerprint
from ..schedule import SCHEDULES
from ..units import Unit, get_unit


def device() -> torch.device:
    """This process's device (its own GPU under `accelerate launch`)."""
    return dist.device()


class RunContext:
    def __init__(self, recipe: Recipe, run_dir: RunDir | None, *, progress: bool, log: Callable[[str], None]):
        self.r = recipe
        self.run_dir = run_dir
        self.progress = progress
        self.log = log
        self.units: list[Unit] = [get_unit(k) for k in recipe.prune.units]  # the kinds of unit this run prunes
        pr = recipe.prune
        self.criterion, self.budget_criterion = scorers(recipe.importance.kind, pr.budget_kind, pr.units,
                                                        across_blocks=pr.scope == "global",
                                                        one_budget=pr.macs_ratio is not None
                                                        or pr.latency_ratio is not None)
        self.needs_paths = self.criterion.needs_paths or self.budget_criterion.needs_paths
        self.uses_path_images = self.criterion.uses_path_images or self.budget_criterion.uses_path_images
        # the importance stage decides the widths when scoring depends on them, or another criterion sets them
        self.importance_fixes_widths = (SCHEDULES[recipe.prune.mode].fixes_widths
                                        or self.budget_criterion is not self.criterion)
        self.skipped: dict[str, list[int]] = {}
        self.summary: dict | None = None  # the run's metrics, collected before the report
        self._classes: list[int] | None = None
        self._dense = None  # (model, data config, spec) as loaded
        self._splits: dict[str, Split] = {}
        self._root: RunContext | None = None  # a sweep target's: the run's context, which measures latency once
        self._tables: dict[str, object] = {}  # latency tables measured, by `prune.latency`

    def for_target(self, recipe: Recipe, run_dir: RunDir) -> "RunContext":
        """The context of another target of a sweep: its own recipe, run directory view and summary; the
        loaded model, dataset splits and latency table (which no target changes) shared with this one."""
        ctx = RunContext(recipe, run_dir, progress=self.progress, log=self.log)
        ctx._dense, ctx._splits = self._loaded(), self._splits
        ctx._root = self._root or self
        return ctx

    def scorer(self, kind: str) -> Criterion:
        """The criterion that scores units of `kind`: the run's own, or the budget criterion where it cannot."""
        return self.criterion if self.criterion.can_score(kind) else self.budget_criterion

    def check(self) -> None:
        """Checks that need the model but no work: the pruning target is reachable under its caps."""
        from ..budget import check_budget

        model, data_cfg, _ = self.model()
        check_budget(model, self.units, self.r.prune, torch.zeros(1, *data_cfg.input_size),
                     self.latency_table())

    def latency_table(self):
        """The measured latency table of the dense model where `prune.latency` says (cached on disk and for the
        run), when the recipe budgets latency; else None."""
        if self.r.prune.latency_ratio is None:
            return None
        return (self._root or self).measured_latency(self.r.prune.latency)

    def measured_latency(self, lc):
        """The dense model's latency table where `lc` (a `prune.latency`) says, measured (or read from the disk
        cache) once per run, so every target of a sweep plans on the same table, even one too noisy to cache."""
        key = lc.model_dump_json()
        if key not in self._tables:
            from ..latency import latency_table

            model, data_cfg, _ = self._loaded()
            self._tables[key] = latency_table(model, lc.spec(), tuple(data_cfg.input_size), on_noise=lc.on_noise,
                                              log=self.log)
        return self._tables[key]

    # ------------------------------------------------------------------------ what stage keys share
    def model_inputs(self) -> dict:
        """The model and the data it reads: what every stage that touches either depends on."""
        r = self.r
        model_dir = resolve_model_dir(r.model.name)
        return {"model": r.model.model_dump(mode="json"),
                "model_files": fingerprint(str(model_dir)) if model_dir else r.model.name,
                "data": r.data.model_dump(include={"source", "image_column", "label_column", "skip_bad"}),
                "data_files": fingerprint(r.data.source)}

    def eval_inputs(self) -> dict:
        return {**self.model_inputs(), "eval": self.r.data.model_dump(include={"eval_split", "eval_images"})}

    # ------------------------------------------------------------------------------- model, data
    def _loaded(self):
        if self._dense is None:
            m = self.r.model
            self._dense = load_model(m.name, pretrained=m.pretrained, **m.kwargs)
        return self._dense

    def dense(self):
        """The dense model as loaded (every class, whatever `prune.classes` says), its data config and spec; a
        fresh copy on every call."""
        model, data_cfg, spec = self._loaded()
        return copy.deepcopy(model), data_cfg, spec

    def model(self):
        """The dense model (restricted to `prune.classes` when set), its data config, and the spec that rebuilds it.
        Loaded once per run; every call returns a fresh copy, since stages prune and move it."""
        model, data_cfg, spec = self._loaded()
        model = copy.deepcopy(model)
        classes = self.classes()
        if classes is not None:
            restrict_head(model, classes)
            spec = dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": len(classes)})
        return model, data_cfg, spec

    def shipped_models(self):
        """The data config and `{onnx name: model}` of what the run deploys: the dense model and the final one
        (`artifacts.shipped`)."""
        dense, data_cfg, _ = self.model()
        return data_cfg, {name: dense if a.stage is None else load_pruned(self.run_dir.path(a.stage))[0]
                          for name, a in shipped(self.r)}

    def classes(self) -> list[int] | None:
        """`prune.classes` as original class ids (None: every class)."""
        if self.r.prune.classes is None:
            return None
        if self._classes is None:
            train = self.split(self.r.data.train_split)
            self._classes = resolve_classes(self.r.prune.classes, self.dense_num_classes,
                                            class_names(train.ds, train.label_column))
        return self._classes

    def class_names(self) -> list[str] | None:
        """The dense model's class names from the dataset's label feature (None when it has none)."""
        train = self.split(self.r.data.train_split)
        names = class_names(train.ds, train.label_column)
        return names if names is not None and len(names) == self.dense_num_classes else None

    def label_names(self) -> list[str] | None:
        """The name of every output of a pruned model: the dense model's class names, restricted to
        `prune.classes` when set (None when the dataset has none)."""
        names, classes = self.class_names(), self.classes()
        return names if names is None or classes is None else [names[c] for c in classes]

    def model_card(self, stage: str, **accuracy: dict | None) -> ModelCard:
        """What the card of a model directory `stage` writes says beyond the model: the base model as the
        recipe names it, the recipe, and the accuracies measured so far (None: not measured)."""
        r = self.r
        acc = {k: {m: v[m] for m in ("top1", "top5", "images") if m in v} for k, v in accuracy.items() if v}
        return ModelCard(base_model=r.model.name, stage=stage, recipe=r.model_dump(mode="json"), accuracy=acc,
                         eval_split=r.data.eval_split,
                         not_measured="Not measured when this directory was written: the run's evaluate stage "
                                      "measures this model next (`evaluate/metrics.json`, `report/report.md`).")

    def stage_metrics(self, stage: str) -> dict:
        """A finished stage's `metrics.json` ({} when it has none): what later model cards quote. The stages
        that quote them read inputs that include theirs (model, data, evaluation images), so the quoted
        figures change only when the quoting stage reruns too."""
        import json

        f = self.run_dir.path(stage) / "metrics.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    @property
    def dense_num_classes(self) -> int:
        return int(self._loaded()[0].num_classes)

    def split(self, split: str) -> Split:
        """A split of the recipe's dataset with its image and label column names (loaded once per run)."""
        if split not in self._splits:
            d = self.r.data
            self._splits[split] = open_split(d.source, split, d.image_column, d.label_column)
        return self._splits[split]

    def dataset(self, split: str, data_cfg, rows: list[int]) -> ImageDataset:
        """`rows` of a split as model inputs; with `prune.classes`, labels re-indexed to the kept classes."""
        classes = self.classes()
        label_map = None if classes is None else {c: i for i, c in enumerate(classes)}
        return load_images(self.split(split), data_cfg, rows, num_classes=self.dense_num_classes,
                           skip_bad=self.r.data.skip_bad, label_map=label_map)

    def rows(self, split: str) -> list[int]:
        """Every row of a split, or with `prune.classes` the rows of those classes."""
        data = self.split(split)
        classes = self.classes()
        if classes is None:
            return list(range(len(data.ds)))
        keep = set(classes)
        return [i for i, y in enumerate(data.labels()) if y in keep]

    def holdout_rows(self, split: str, share: float, seed: int) -> list[int]:
        """A seeded `share` of a split's rows (at least one when share > 0), held out of training to judge it."""
        rows = self.rows(split)
        n = min(len(rows) - 1, max(1, round(share * len(rows)))) if share > 0 else 0
        return sorted(random.Random(seed + 7919).sample(rows, n))

    def loader(self, split: str, data_cfg, rows_wanted: int | None, seed: int, shard: bool = False,
               exclude: list[int] | None = None, only: list[int] | None = None):
        """Batches `(x, y, rows, bad)` of `rows_wanted` rows drawn with `seed` (all rows if None) from the
        split's rows (or `only` those), less `exclude`; with `shard`, only this process's share of them
        under `accelerate launch`."""
        d = self.r.data
        rows = self.rows(split) if only is None else list(only)
        if exclude:
            gone = set(exclude)
            rows = [i for i in rows if i not in gone]
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
        rows = sample_per_class(self.split(d.train_split).labels(), p.images_per_class, self.dense_num_classes, p.seed,
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

    # ------------------------------------------------------------------------------ measurements
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

    def eval_images(self, data_cfg, n: int = 8) -> torch.Tensor:
        """The first `n` prepared images of the evaluation rows (export's parity check)."""
        loader = self.loader(self.r.data.eval_split, data_cfg, self.r.data.eval_images, seed=0)
        xs = []
        for x, _ in self.batches(loader, "export"):
            xs.append(x.cpu())
            if sum(len(t) for t in xs) >= n:
                break
        return torch.cat(xs)[:n]
