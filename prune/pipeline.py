"""`prune --recipe`: the ordered stages of a run, each a directory of the run that the next stage reads.

    paths -> importance -> prune -> baseline -> evaluate -> [reconstruct] -> [finetune] -> export -> bench -> report

A sweep (`prune.macs_ratio: [0.3, 0.5, ...]`) runs them for every target, sharing the stages no target
changes, then writes the sweep's front (`sweep/`).

A stage's module (`prune/stages/`) holds both its inputs (its cache key) and its build, so the key
always describes the code that uses it; `RunDir` reuses a stage whose key is unchanged.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Protocol

from . import dist
from .io import write_json
from .provenance import code_digest
from .recipe import Recipe
from .run import RunDir, stage_key
from .stages import baseline, bench, evaluate, export, finetune, importance, paths, prune, reconstruct, report
from .stages.context import RunContext


class Stage(Protocol):
    """What a stage module (`prune/stages/<name>.py`) provides: its directory's name, whether every process
    builds it under `accelerate launch`, its inputs (the cache key; None when the recipe skips it) and its build
    (writes `out`, returns the stage's info)."""

    NAME: str
    DISTRIBUTED: bool

    def inputs(self, ctx: RunContext) -> dict | None: ...

    def build(self, ctx: RunContext, out: Path) -> dict: ...


PIPELINE: tuple[Stage, ...] = (paths, importance, prune, baseline, evaluate, reconstruct, finetune, export, bench,
                               report)
STAGES = tuple(s.NAME for s in PIPELINE)


def stage_code(stage: Stage) -> str:
    """The digest of the code that builds `stage`: its module and the run context it calls, with all they import."""
    return code_digest(stage.__name__, RunContext.__module__)


class Pipeline:
    """One run: the recipe's stages in order, or with a sweep (a prune target given as a list) the stages of
    every target, where a stage whose inputs no target changes is built once and shared (`RunDir.for_target`),
    followed by the sweep's report (`prune/sweep.py`)."""

    def __init__(self, recipe: Recipe, out: str | Path, *, update: bool = False, progress: bool = True, log=print):
        log = log if dist.is_main() else (lambda msg: None)  # one voice under accelerate launch
        targets = recipe.sweep()
        first = RunContext(targets[0][1], None, progress=progress and dist.is_main(), log=log)
        contexts = [first] + [first.for_target(r, None) for _, r in targets[1:]]
        for ctx in contexts:  # before the run directory exists: nothing is written for a target that cannot be met
            ctx.check()
        self.recipe = recipe
        self.run_dir = RunDir(out, recipe.model_dump(mode="json"), update=update, log=log)  # takes the lock
        self.targets: list[tuple[str | None, RunContext]] = []
        for (label, _), ctx in zip(targets, contexts):
            ctx.run_dir = self.run_dir if label is None else self.run_dir.for_target(label)
            self.targets.append((label, ctx))
        self.ctx = contexts[0]

    @property
    def is_sweep(self) -> bool:
        return self.targets[0][0] is not None

    def run(self, force: set[str] = frozenset(), until: str | None = None) -> dict | None:
        """Build (or reuse) every stage the recipe asks for (with `until`, up to that stage only); returns the
        run's summary (also `summary.json`; a sweep's lists every target's). The run directory's lock is
        released at the end, whatever happens."""
        try:
            stages = PIPELINE[:STAGES.index(until) + 1] if until else PIPELINE
            shared_done: set[str] = set()
            for label, ctx in self.targets:
                if label is not None and dist.is_main():
                    self._write_target_recipe(ctx)
                for stage in stages:
                    inputs = stage.inputs(ctx)
                    if inputs is None:
                        continue
                    if label is not None:
                        if stage.NAME in shared_done:
                            continue  # built (or reused) for the first target; its key is the same for all
                        if self._per_target(stage, inputs):
                            self.run_dir.per_target.add(stage.NAME)
                        else:
                            shared_done.add(stage.NAME)
                    if stage is report and dist.is_main():
                        write_json(ctx.run_dir.home / "summary.json", ctx.summary)
                    ctx.run_dir.run(stage.NAME, inputs, partial(stage.build, ctx), force=stage.NAME in force,
                                    distributed=stage.DISTRIBUTED, code=stage_code(stage))
            if not self.is_sweep:
                return self.ctx.summary
            if until is not None and until != report.NAME:
                return None
            return self._sweep_report(force)
        finally:
            self.close()

    def _per_target(self, stage, inputs: dict) -> bool:
        """Whether a sweep builds `stage` once per target: it reads a stage that is, or some target gives it
        other inputs (decided once, when the first target reaches it)."""
        if stage.NAME in self.run_dir.per_target:
            return True
        if any(r in self.run_dir.per_target for r in inputs.get("reads", [])):
            return True
        key = stage_key(inputs)
        return any(stage_key(stage.inputs(ctx)) != key for _, ctx in self.targets[1:])

    def _write_target_recipe(self, ctx: RunContext) -> None:
        """`targets/<label>/recipe.yaml`: the target's own recipe, so its directory reads as a run's (for
        `prune bench`, `prune export`, `load_pruned`)."""
        import yaml

        from .io import atomic_path

        ctx.run_dir.home.mkdir(parents=True, exist_ok=True)
        with atomic_path(ctx.run_dir.home / "recipe.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(ctx.r.model_dump(mode="json"), sort_keys=False))

    def _sweep_report(self, force: set[str]) -> dict:
        """The sweep's own stage: every target's points, the front and the recommended artifact."""
        from . import sweep

        summaries = {label: ctx.summary for label, ctx in self.targets}
        inputs = {"report": self.recipe.report.model_dump(), "swept": self.recipe.prune.swept(),
                  "metrics": stage_key(summaries), "reads": []}
        self.run_dir.run(sweep.NAME, inputs, partial(sweep.build, summaries, self.recipe), force=sweep.NAME in force,
                         code=code_digest(sweep.__name__))
        result = {"sweep": json.loads((self.run_dir.path(sweep.NAME) / sweep.FILE).read_text()), "targets": summaries}
        if dist.is_main():
            write_json(self.run_dir.root / "summary.json", result)
        return result

    def plan(self) -> list[tuple[str | None, dict]]:
        """Score the units (the stages up to importance, reused when done) and return every target's per-block
        plan (`plan.block_plan`) without any surgery: what `prune plan` prints."""
        import torch
        from safetensors.torch import load_file

        from .budget import block_plan
        from .stages.prune import planned_keep

        self.run(until=importance.NAME)
        plans = []
        for label, ctx in self.targets:
            model, data_cfg, _ = ctx.model()
            example = torch.zeros(1, *data_cfg.input_size)
            imp = load_file(ctx.run_dir.path(importance.NAME) / importance.FILE)
            plans.append((label, block_plan(model, ctx.units, planned_keep(ctx, imp, model, example), example,
                                            ctx.latency_table())))
        return plans

    def close(self) -> None:
        """Release the run directory (also done by `run`)."""
        self.run_dir.close()
