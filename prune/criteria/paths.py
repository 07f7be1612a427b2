"""Criteria read from the paths stage: per-class statistics of the discovered neuron paths.

Paths run through FFN neurons, so these criteria score FFN neurons only (`kinds`), and their values
order the neurons of a block but are ranks or per-image shares, not nats (`scale`): path JAS mass
piles up in the last blocks, so ranked across blocks it empties the first ones (top-1 0.85 against
0.98 on the quickstart at prune.macs_ratio 0.3). The block widths and any heads come from the
budget criterion (`criteria.scorers`); `prune.budget_kind: path_frequency` asks for the old widths."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..paths import PathStats
from .base import Criterion


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


def block_ranks(table: torch.Tensor) -> torch.Tensor:
    """Rank of every entry within its block (row): 0 = least important, D - 1 = most; ties by index."""
    return table.double().argsort(dim=1, stable=True).argsort(dim=1).double()


class PathJAS(Criterion):
    name = "path_jas"
    kinds = frozenset({"ffn"})
    scale = "rank"
    needs_paths = True
    formula = ("sum_c mean over the class's images of JA_l[d] / ||JA(image)||_1: the dense per-stage joint "
               "attribution scores, each image normalised to L1 mass 1, every class weighted equally")

    def scores(self, ctx, unit):
        if ctx.stats.counts.sum() > 0 and not ctx.stats.score_norm_sum.any():
            raise ConfigError("these path stats hold no candidate scores (discovery ran with keep_candidates off); "
                              "rerun discovery with candidates, or use path_frequency")
        return _class_mean(ctx.stats, ctx.stats.score_norm_sum)


class PathFrequency(Criterion):
    name = "path_frequency"
    kinds = frozenset({"ffn"})
    scale = "rank"
    needs_paths = True
    formula = ("sum_c freq[c,l,d] / count[c]: how often the neuron is on a top-K path of class c, every class "
               "weighted equally; ties broken by path_jas (the table holds the resulting ranks)")

    def __init__(self, tie_break: Criterion | None = None):
        self.tie_break = tie_break or PathJAS()

    def scores(self, ctx, unit):
        return lexicographic_ranks(_class_mean(ctx.stats, ctx.stats.freq), self.tie_break.scores(ctx, unit))


class PathCoverage(Criterion):
    name = "path_coverage"
    kinds = frozenset({"ffn"})
    scale = "rank"
    needs_paths = True
    formula = ("every class's preferred (modal) top-K path neurons rank above all others; "
               "within each set, path_jas decides")

    def __init__(self, within: Criterion | None = None):
        self.within = within or PathJAS()

    def scores(self, ctx, unit):
        jas = self.within.scores(ctx, unit)
        protected = torch.zeros_like(jas, dtype=torch.bool)
        for c in range(ctx.stats.num_classes):
            if ctx.stats.counts[c] > 0:
                protected.scatter_(1, ctx.stats.preferred_path(c), True)
        shifted = jas - jas.min()
        return shifted + protected * (shifted.max() + 1)


class PathTaylor(Criterion):
    name = "path_taylor"
    kinds = frozenset({"ffn"})
    scale = "rank"
    needs_paths = True
    formula = ("Borda count per block: rank under taylor + rank under path_frequency, ties broken by taylor; "
               "loss sensitivity on the calibration images and membership in the classes' paths, weighted "
               "equally. Ranks are per block, so under global scope every block loses the same share")

    def __init__(self, taylor: Criterion, paths: Criterion):
        self.taylor, self.paths = taylor, paths

    def scores(self, ctx, unit):
        taylor = self.taylor.scores(ctx, unit)
        fused = block_ranks(taylor) + block_ranks(self.paths.scores(ctx, unit))
        return torch.stack([lexicographic_ranks(f, t) for f, t in zip(fused, taylor)])
