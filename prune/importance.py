"""Importance criteria for FFN neurons, as Torch-Pruning importance objects.

Every criterion produces a table of scores `[L, D]` (one per FFN neuron of each block; higher =
keep). Tables are what the importance stage saves and what `TableImportance` serves to
Torch-Pruning, so the pruner never depends on how a score was made. Classic criteria use
Torch-Pruning's own importance classes, evaluated on each block's FFN group.

Adding a criterion is one small class with a `name` and a `scores(ctx)` method, registered with
`@register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from .errors import ConfigError
from .paths import PathStats

CRITERIA: dict[str, type["Criterion"]] = {}


def register(cls):
    CRITERIA[cls.name] = cls
    return cls


@dataclass
class ImportanceContext:
    """What criteria may use: the model, its FFN modules, path stats, calibration batches."""

    model: nn.Module
    stats: PathStats | None = None
    calibration: Callable[[], object] | None = None  # returns an iterable of (images, labels, ...) batches
    act_stats: dict | None = None  # from `activation_stats`: mean, abs_mean, var, each [L, D]
    example_inputs: torch.Tensor | None = None
    seed: int = 0
    path_images: Callable[[], object] | None = None  # class-balanced (images, labels, ...) batches of the paths
    steps: int = 20  # integrated-gradient steps m
    objective: str = "logprob"  # what attributions explain: log p(label) or p(label)
    rows: int | None = None  # rows (images x steps) per forward, bounds memory
    progress: bool = False
    reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)  # sum over processes
    _graph: object = None

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def graph(self) -> tp.DependencyGraph:
        """Torch-Pruning's dependency graph of the model (built once)."""
        from .pruning import unwrapped

        if self._graph is None:
            self._graph = tp.DependencyGraph().build_dependency(self.model, example_inputs=self.example_inputs,
                                                                unwrapped_parameters=unwrapped(self.model))
        return self._graph

    @property
    def fc1s(self) -> list[nn.Linear]:
        return [b.mlp.fc1 for b in self.model.blocks]


class Criterion:
    """A scoring rule for every FFN neuron. `scores(ctx)` gives the whole `[L, D]` table at once;
    criteria with `progressive = True` also score one block at a time (`score_block(ctx, l)`, `[D]`)
    on a model whose earlier blocks are pruned (masked), which `prune.mode: progressive` needs."""

    name: str = ""
    needs_paths: bool = False  # reads the paths stage (per-class path statistics)
    uses_path_images: bool = False  # scores the paths' class-balanced images itself (paths.* settings)
    progressive: bool = False
    formula: str = ""

    @classmethod
    def scores(cls, ctx: ImportanceContext) -> torch.Tensor:  # [L, D]
        if cls.progressive:
            from tqdm.auto import tqdm

            blocks = tqdm(range(len(ctx.fc1s)), desc=cls.name, unit="block", disable=not ctx.progress)
            return torch.stack([cls.score_block(ctx, l) for l in blocks])
        raise NotImplementedError

    @classmethod
    def score_block(cls, ctx: ImportanceContext, block: int) -> torch.Tensor:  # [D]
        raise NotImplementedError


class TableImportance(tp.importance.Importance):
    """Serve a precomputed `[L, D]` table to Torch-Pruning: the score of channel d of block l's FFN."""

    def __init__(self, table: torch.Tensor, fc1s: list[nn.Linear]):
        self.table = table
        self.layer_of = {id(m): i for i, m in enumerate(fc1s)}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        for dep, idxs in group:
            if id(dep.layer) in self.layer_of and dep.pruning_fn == tp.prune_linear_out_channels:
                l = self.layer_of[id(dep.layer)]
                return self.table[l, torch.as_tensor(list(idxs))].double()  # float32 would merge near ties
        return None  # not an FFN group: nothing to score


# ------------------------------------------------------------------------------------ path criteria
def _class_mean(stats: PathStats, tensor: torch.Tensor) -> torch.Tensor:
    """Per-class average of a `[C, L, D]` tensor, then summed over classes: every class counts equally."""
    seen = stats.counts > 0
    if not seen.any():
        raise ConfigError("the path statistics hold no images; run discovery on more images")
    return (tensor[seen].double() / stats.counts[seen].double()[:, None, None]).sum(0)


def lexicographic_ranks(primary: torch.Tensor, secondary: torch.Tensor, decimals: int = 9) -> torch.Tensor:
    """Ranks (0 = least important) of all entries ordered by `primary`, ties broken by `secondary`.

    `primary` is rounded first so that sums like 0.1 + 0.2 and 0.3 count as the same value.
    Ranks are global over the table, so global pruning can still compare blocks.
    """
    p = torch.round(primary.double() * 10**decimals).flatten()
    order = secondary.double().flatten().argsort(stable=True)
    order = order[p[order].argsort(stable=True)]
    ranks = torch.empty_like(p)
    ranks[order] = torch.arange(len(p), dtype=torch.float64)
    return ranks.reshape(primary.shape)


@register
class PathFrequency(Criterion):
    name = "path_frequency"
    needs_paths = True
    formula = ("sum_c freq[c,l,d] / count[c]: how often the neuron is on a top-K path of class c, every class "
               "weighted equally; ties broken by path_jas (the table holds the resulting ranks)")

    @staticmethod
    def scores(ctx):
        return lexicographic_ranks(_class_mean(ctx.stats, ctx.stats.freq), PathJAS.scores(ctx))


@register
class PathJAS(Criterion):
    name = "path_jas"
    needs_paths = True
    formula = ("sum_c mean over the class's images of JA_l[d] / ||JA(image)||_1: the dense per-stage joint "
               "attribution scores, each image normalised to L1 mass 1, every class weighted equally")

    @staticmethod
    def scores(ctx):
        if ctx.stats.counts.sum() > 0 and not ctx.stats.score_norm_sum.any():
            raise ConfigError("these path stats hold no candidate scores (discovery ran with keep_candidates off); "
                              "rerun discovery with candidates, or use path_frequency")
        return _class_mean(ctx.stats, ctx.stats.score_norm_sum)


@register
class PathCoverage(Criterion):
    name = "path_coverage"
    needs_paths = True
    formula = ("every class's preferred (modal) top-K path neurons rank above all others; "
               "within each set, path_jas decides")

    @staticmethod
    def scores(ctx):
        jas = PathJAS.scores(ctx)
        protected = torch.zeros_like(jas, dtype=torch.bool)
        for c in range(ctx.stats.num_classes):
            if ctx.stats.counts[c] > 0:
                protected.scatter_(1, ctx.stats.preferred_path(c), True)
        shifted = jas - jas.min()
        return shifted + protected * (shifted.max() + 1)


# ---------------------------------------------------------------------------------- classic criteria
def _tp_table(ctx: ImportanceContext, importance: tp.importance.Importance,
              blocks: list[int] | None = None) -> torch.Tensor:
    """Evaluate a Torch-Pruning importance on each block's whole FFN group -> `[len(blocks), D]`."""
    dg = ctx.graph()
    rows = []
    for l in range(len(ctx.fc1s)) if blocks is None else blocks:
        fc1 = ctx.fc1s[l]
        group = dg.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=list(range(fc1.out_features)))
        rows.append(importance(group).detach().cpu().double())
    return torch.stack(rows)


class _Magnitude(Criterion):
    p = 1

    @classmethod
    def scores(cls, ctx):
        return _tp_table(ctx, tp.importance.GroupMagnitudeImportance(p=cls.p))


@register
class MagnitudeL1(_Magnitude):
    name, p = "magnitude_l1", 1
    formula = "Torch-Pruning GroupMagnitudeImportance(p=1): L1 norm of fc1 row + fc2 column (group sum, mean-normalised)"


@register
class MagnitudeL2(_Magnitude):
    name, p = "magnitude_l2", 2
    formula = "Torch-Pruning GroupMagnitudeImportance(p=2): squared L2 norm of fc1 row + fc2 column"


@register
class Taylor(Criterion):
    name = "taylor"
    progressive = True
    formula = ("Torch-Pruning GroupTaylorImportance: |weight x dLoss/dweight| of fc1 row + fc2 column, "
               "gradients of the cross-entropy summed over the calibration batches")

    @classmethod
    def scores(cls, ctx):
        return cls._table(ctx, None)

    @classmethod
    def score_block(cls, ctx, block):
        return cls._table(ctx, [block])[0]

    @staticmethod
    def _table(ctx, blocks):
        """Gradients of the summed cross-entropy for the given blocks' FFN weights only (backward stops
        there), then Torch-Pruning's Taylor importance of those blocks."""
        model = ctx.model
        ctx.graph()  # built before any gradient is computed
        wanted = [p for l in (range(len(ctx.fc1s)) if blocks is None else blocks)
                  for p in model.blocks[l].mlp.parameters()]
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in wanted:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad():
                for batch in ctx.calibration():
                    x, y = batch[0], batch[1]
                    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            for p in wanted:  # every process's calibration share
                p.grad = ctx.reduce(p.grad if p.grad is not None else torch.zeros_like(p))
            return _tp_table(ctx, tp.importance.GroupTaylorImportance(), blocks)
        finally:
            model.zero_grad(set_to_none=True)
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)


@register
class PathAttribution(Criterion):
    name = "path_attribution"
    uses_path_images = True
    progressive = True
    formula = ("integrated gradients of scaling all of block l's FFN channels (every token) from 0 to their value "
               "(m steps) of the objective (default log p(label)) on the paths' class-balanced images; |score| averaged "
               "within each class, classes summed. In nats of the objective, so blocks compare (prune.scope: global); "
               "prune.mode: progressive scores each block with the earlier blocks already pruned (the paper's "
               "layer-progressive locating)")

    @classmethod
    def score_block(cls, ctx, block):
        from .progressive import attribution_rows

        return attribution_rows(ctx.model, ctx.path_images, ctx.num_classes, steps=ctx.steps,
                                objective=ctx.objective, rows=ctx.rows, reduce=ctx.reduce)(block)


@register
class ActivationTaylor(Criterion):
    name = "activation_taylor"
    progressive = True
    formula = ("|sum over tokens of a_l[d] x d objective / d a_l[d]| per calibration image (first-order Taylor of the "
               "objective in the neuron's activation: the alpha = 1 end of path_attribution's integral), averaged "
               "within each class, classes summed")

    @classmethod
    def score_block(cls, ctx, block):
        from .progressive import attribution_rows

        return attribution_rows(ctx.model, ctx.calibration, ctx.num_classes, steps=None, objective=ctx.objective,
                                rows=ctx.rows, reduce=ctx.reduce)(block)


def block_ranks(table: torch.Tensor) -> torch.Tensor:
    """Rank of every entry within its block (row): 0 = least important, D - 1 = most; ties by index."""
    return table.double().argsort(dim=1, stable=True).argsort(dim=1).double()


@register
class PathTaylor(Criterion):
    name = "path_taylor"
    needs_paths = True
    formula = ("Borda count per block: rank under taylor + rank under path_frequency, ties broken by taylor; "
               "loss sensitivity on the calibration images and membership in the classes' paths, weighted "
               "equally. Ranks are per block, so under global scope every block loses the same share")

    @staticmethod
    def scores(ctx):
        taylor = Taylor.scores(ctx)
        fused = block_ranks(taylor) + block_ranks(PathFrequency.scores(ctx))
        return torch.stack([lexicographic_ranks(f, t) for f, t in zip(fused, taylor)])


@register
class ActivationMean(Criterion):
    name = "activation_mean"
    formula = "mean |a_l[d]| over all tokens of the calibration images"

    @staticmethod
    def scores(ctx):
        return ctx.act_stats["abs_mean"]


@register
class ActivationVariance(Criterion):
    name = "activation_variance"
    formula = ("variance of a_l[d] over all tokens of the calibration images: a low-variance neuron is "
               "nearly constant, which mean compensation folds into fc2's bias")

    @staticmethod
    def scores(ctx):
        return ctx.act_stats["var"]


@register
class Random(Criterion):
    name = "random"
    formula = "uniform random scores (seeded): the floor every criterion must beat"

    @staticmethod
    def scores(ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        return torch.stack([torch.rand(f.out_features, generator=g, dtype=torch.float64) for f in ctx.fc1s])


def get_criterion(name: str) -> type[Criterion]:
    if name not in CRITERIA:
        raise ConfigError(f"unknown importance kind {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


@torch.no_grad()
def activation_stats(model: nn.Module, batches, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> dict[str, torch.Tensor]:
    """Mean, mean |a| and variance of every FFN neuron over all tokens of `batches` (float64 sums;
    `reduce` adds up the sums of several processes)."""
    acts = [b.mlp.act for b in model.blocks]
    sums = [None] * len(acts)
    count = [0]

    def hook(i):
        def f(module, inp, out):
            a = out.detach().reshape(-1, out.shape[-1]).double()
            s = torch.stack([a.sum(0), a.abs().sum(0), (a * a).sum(0)])
            sums[i] = s if sums[i] is None else sums[i] + s
            if i == 0:
                count[0] += a.shape[0]
        return f

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(acts)]
    try:
        for batch in batches:
            model(batch[0])
    finally:
        for h in handles:
            h.remove()
    reduce = reduce or (lambda t: t)
    widths = [b.mlp.fc1.out_features for b in model.blocks]
    total = torch.stack([sums[i].cpu() if sums[i] is not None else torch.zeros(3, widths[i], dtype=torch.float64)
                         for i in range(len(acts))])  # a process without images still joins the sum
    total, n = reduce(total), int(reduce(torch.tensor([count[0]], dtype=torch.float64)).item())
    if n == 0:
        raise ConfigError("no calibration images: the calibration split is empty")
    s = total / n  # [L, 3, D]
    mean, abs_mean, sq = (s[:, i].contiguous() for i in range(3))
    return {"mean": mean, "abs_mean": abs_mean, "var": (sq - mean * mean).clamp_min(0), "tokens": torch.tensor(n)}
