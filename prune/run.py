"""The run directory: the resolved recipe, one sub-directory per stage, stage reuse and atomic output.

A stage's key is a hash of its settings and of the keys of the stages it reads, so a stage whose
inputs are unchanged is reused (an interrupted run resumes where it stopped), and a change
upstream reruns everything downstream. A stage is built in a hidden temporary directory and
renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from .errors import ConfigError
from .io import atomic_path, write_json


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def stage_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """`root/recipe.yaml`, `root/<stage>/stage.json` and the stage outputs beside it."""

    def __init__(self, root: str | Path, recipe: dict, *, update: bool = False, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log
        self.keys: dict[str, str] = {}
        existing = self.root / "recipe.yaml"
        if existing.is_file():
            old = yaml.safe_load(existing.read_text()) or {}
            if old != recipe and not update:
                a, b = _flatten(old), _flatten(recipe)
                diff = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                raise ConfigError(
                    f"run directory {self.root} was made by a different recipe ({diff}: {a.get(diff)!r} -> "
                    f"{b.get(diff)!r}); use another --out, or --update to rerun only the stages that change")
        elif self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(f"{self.root} exists and is not a prune run directory; choose another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(existing) as tmp:
            tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))

    def path(self, stage: str) -> Path:
        return self.root / stage

    def run(self, stage: str, inputs: dict, build: Callable[[Path], dict | None], *, force: bool = False) -> Path:
        """Reuse `stage` if its key matches, else build it into a temp dir and move it into place."""
        key = stage_key({**inputs, "upstream": {k: self.keys[k] for k in inputs.get("reads", [])}})
        self.keys[stage] = key
        final = self.path(stage)
        meta = final / "stage.json"
        if not force and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
            self.log(f"[{stage}] unchanged, reusing {final}")
            return final
        tmp = self.root / f".{stage}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.log(f"[{stage}] running")
        start = time.perf_counter()
        try:
            info = build(tmp) or {}
            write_json(tmp / "stage.json", {"stage": stage, "key": key, "seconds": time.perf_counter() - start,
                                            "inputs": inputs, **info})
            old = self.root / f".{stage}.old-{os.getpid()}"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s")
        return final
