"""The run directory: the resolved recipe, one sub-directory per stage, stage reuse and atomic output.

A stage's key is a hash of its settings and of the keys of the stages it reads, so a stage whose
inputs are unchanged is reused (an interrupted run resumes where it stopped), and a change
upstream reruns everything downstream. A stage is built in a hidden temporary directory and
renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import yaml

from . import __version__, dist
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


def fingerprint(spec: str) -> list | str:
    """What identifies a local file or directory's content cheaply (names, sizes, mtimes); a hub id as is."""
    p = Path(spec).expanduser()
    if p.is_file():
        st = p.stat()
        return [[p.name, st.st_size, st.st_mtime_ns]]
    if p.is_dir():
        return [[str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns]
                for f in sorted(p.rglob("*")) if f.is_file()][:10_000]
    return spec


def stage_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """`root/recipe.yaml`, `root/<stage>/stage.json` and the stage outputs beside it."""

    def __init__(self, root: str | Path, recipe: dict, *, update: bool = False, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log
        self.keys: dict[str, str] = {}
        self.builds: dict[str, str] = {}  # the build id each stage has now (reused or new)
        existing = self.root / "recipe.yaml"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a directory")
        if existing.is_file():
            old = yaml.safe_load(existing.read_text()) or {}
            if old != recipe and not update:
                a, b = _flatten(old), _flatten(recipe)
                diff = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "recipe")
                raise ConfigError(
                    f"run directory {self.root} was made by a different recipe ({diff}: {a.get(diff)!r} -> "
                    f"{b.get(diff)!r}); use another --out, or --update to rerun only the stages that change")
        elif self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(f"{self.root} exists and is not a prune run directory; choose another --out")
        dist.barrier()  # every process has checked the directory before the main one writes to it
        if dist.is_main():  # under accelerate launch only the main process writes run files
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(existing) as tmp:
                tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))
        dist.barrier()

    def path(self, stage: str) -> Path:
        return self.root / stage

    def run(self, stage: str, inputs: dict, build: Callable[[Path], dict | None], *, force: bool = False,
            distributed: bool = False) -> Path:
        """Reuse `stage` if its key matches, else build it into a temp dir and move it into place.

        The key covers the stage's inputs and the *build ids* of the stages it reads, so rebuilding
        (or forcing) a stage reruns everything downstream of it. Under `accelerate launch` a
        `distributed` stage is built by every process (each does its share and they combine), any
        other stage by the main process alone while the others wait; only the main process writes,
        and every process then takes the published build id, so all agree on what comes next.
        """
        upstream = {k: self.builds[k] for k in inputs.get("reads", [])}
        key = stage_key({**inputs, "upstream": upstream, "prune_version": __version__})
        self.keys[stage] = key
        final = self.path(stage)
        meta = final / "stage.json"
        if not force and meta.is_file():
            done = json.loads(meta.read_text())
            if done.get("key") == key:
                self.builds[stage] = done.get("build", key)
                self.log(f"[{stage}] unchanged, reusing {final}")
                return final
        tmp = self.root / f".{stage}.tmp"
        main = dist.is_main()
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.log(f"[{stage}] running")
        start = time.perf_counter()
        try:
            info = (build(tmp) or {}) if distributed or main else {}
            dist.barrier()
            if main:
                write_json(tmp / "stage.json", {"stage": stage, "key": key, "build": uuid.uuid4().hex[:16],
                                                "seconds": time.perf_counter() - start, "inputs": inputs, **info})
                old = self.root / f".{stage}.old"
                shutil.rmtree(old, ignore_errors=True)
                if final.exists():
                    final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        self.builds[stage] = json.loads(meta.read_text())["build"]
        self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s")
        return final
