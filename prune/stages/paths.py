"""The paths stage: per-class neuron paths (the paper's JAS, layer-progressive), for path criteria."""

from __future__ import annotations

from pathlib import Path

from ..paths.discover import DiscoverySettings, discover
from .context import RunContext

NAME = "paths"
DISTRIBUTED = True  # every process discovers its share of the images


def inputs(ctx: RunContext) -> dict | None:
    if not ctx.needs_paths:
        return None
    r = ctx.r
    return {**ctx.model_inputs(), "split": r.data.train_split, "paths": r.paths.model_dump()}


def build(ctx: RunContext, out: Path) -> dict:
    r = ctx.r
    p = r.paths
    # for pruning, "auto" means every token: structural removal cuts a neuron at all tokens, and CLS-only
    # paths measured at random level (benchmarks/RESULTS.md); `prune paths` keeps the paper's CLS default
    scope = "tokens" if p.scope == "auto" else p.scope
    settings = DiscoverySettings(method=p.method, steps=p.steps, top_k=p.top_k, scope=scope, target=p.target,
                                 images_per_class=p.images_per_class, batch_size=p.batch_size, seed=p.seed)
    summary = discover(r.model.name, r.data.source, r.data.train_split, settings, out,
                       pretrained=r.model.pretrained, model_kwargs=r.model.kwargs,
                       image_column=r.data.image_column, label_column=r.data.label_column,
                       skip_bad=r.data.skip_bad, progress=ctx.progress,
                       loaded=ctx.dense(), data=ctx.split(r.data.train_split))
    return {"images": summary["images"], "mean_jas": summary["mean_jas"], "skipped_rows": summary["skipped_rows"]}
