"""`prune --recipe`: the ordered stages of a run, each a directory of the run that the next stage reads.

    paths -> importance -> prune -> baseline -> evaluate -> [reconstruct] -> [finetune] -> export -> bench -> report

A stage's module (`prune/stages/`) holds both its inputs (its cache key) and its build, so the key
always describes the code that uses it; `RunDir` reuses a stage whose key is unchanged.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from . import dist
from .io import write_json
from .provenance import code_digest
from .recipe import Recipe
from .run import RunDir
from .stages import baseline, bench, evaluate, export, finetune, importance, paths, prune, reconstruct, report
from .stages.context import RunContext

PIPELINE = (paths, importance, prune, baseline, evaluate, reconstruct, finetune, export, bench, report)
STAGES = tuple(s.NAME for s in PIPELINE)


def stage_code(stage) -> str:
    """The digest of the code that builds `stage`: its module and the run context it calls, with all they import."""
    return code_digest(stage.__name__, RunContext.__module__)


class Pipeline:
    def __init__(self, recipe: Recipe, out: str | Path, *, update: bool = False, progress: bool = True, log=print):
        log = log if dist.is_main() else (lambda msg: None)  # one voice under accelerate launch
        ctx = RunContext(recipe, None, progress=progress and dist.is_main(), log=log)
        ctx.check()  # before the run directory exists: nothing is written for a target that cannot be met
        self.run_dir = RunDir(out, recipe.model_dump(mode="json"), update=update, log=log)  # takes the lock
        ctx.run_dir = self.run_dir
        self.ctx = ctx

    def run(self, force: set[str] = frozenset(), until: str | None = None) -> dict | None:
        """Build (or reuse) every stage the recipe asks for (with `until`, up to that stage only); returns the
        run's summary (also `summary.json`). The run directory's lock is released at the end, whatever happens."""
        try:
            for stage in PIPELINE[:STAGES.index(until) + 1] if until else PIPELINE:
                inputs = stage.inputs(self.ctx)
                if inputs is None:
                    continue
                if stage is report and dist.is_main():
                    write_json(self.run_dir.root / "summary.json", self.ctx.summary)
                self.run_dir.run(stage.NAME, inputs, partial(stage.build, self.ctx), force=stage.NAME in force,
                                 distributed=stage.DISTRIBUTED, code=stage_code(stage))
            return self.ctx.summary
        finally:
            self.close()

    def plan(self) -> dict:
        """Score the units (the stages up to importance, reused when done) and return the cut's per-block plan
        (`plan.block_plan`) without any surgery: what `prune plan` prints."""
        import torch
        from safetensors.torch import load_file

        from .plan import block_plan
        from .stages.prune import planned_keep

        self.run(until=importance.NAME)
        ctx = self.ctx
        model, data_cfg, _ = ctx.model()
        example = torch.zeros(1, *data_cfg.input_size)
        imp = load_file(ctx.run_dir.path(importance.NAME) / importance.FILE)
        return block_plan(model, ctx.units, planned_keep(ctx, imp, model, example), example, ctx.latency_table())

    def close(self) -> None:
        """Release the run directory (also done by `run`)."""
        self.run_dir.close()
