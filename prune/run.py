"""The run directory: the resolved recipe, one sub-directory per stage, stage reuse and atomic output.

A stage's key is a hash of its settings, of the code that builds it (`provenance`) and of the build
ids of the stages it reads, so a stage whose inputs and code are unchanged is reused (an interrupted
run resumes where it stopped), and a change upstream reruns everything downstream. A stage is built in a hidden temporary directory and
renamed into place only when complete, with a record of every file it wrote (size and SHA-256);
reuse verifies that record first, so a damaged stage is rebuilt rather than trusted. One run at a
time writes a directory: the run holds an OS file lock (`filelock`) that the kernel drops when the
process dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import torch
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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(stage_dir: Path) -> dict[str, dict]:
    """What a stage wrote: `{relative path: {size, sha256}}` of every file but its stage.json."""
    return {str(f.relative_to(stage_dir)): {"size": f.stat().st_size, "sha256": sha256(f)}
            for f in sorted(stage_dir.rglob("*")) if f.is_file() and f.name != "stage.json"}


def damage(stage_dir: Path, record: dict | None) -> str | None:
    """Why a finished stage's files do not match its record (None: they do). Sizes first, then hashes."""
    if record is None:
        return "has no record of its files (made by an older prune)"
    for rel, want in record.items():
        f = stage_dir / rel
        name = f"{stage_dir.name}/{rel}"
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} is {size:,} bytes, {want['size']:,} when written"
    for rel, want in record.items():
        if sha256(stage_dir / rel) != want["sha256"]:
            return f"{stage_dir.name}/{rel} has changed since it was written (SHA-256 differs)"
    return None


LOCK, HOLDER = ".lock", ".lock.holder"  # in the run directory
TARGETS = "targets"  # a sweep's per-target stages live in targets/<label>/


def _own(name: str) -> bool:
    """Files a starting run writes before recipe.yaml: they do not make a directory "not a run directory"."""
    return name in (LOCK, HOLDER) or (name.startswith((f".{HOLDER}.", ".recipe.yaml.")) and name.endswith(".tmp"))


def stage_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """`root/recipe.yaml`, `root/<stage>/stage.json` and the stage outputs beside it."""

    def __init__(self, root: str | Path, recipe: dict, *, update: bool = False, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log
        self.keys: dict[str, str] = {}  # by the stage's place in the directory (`place`)
        self.builds: dict[str, str] = {}  # the build id each stage has now (reused or new), by place
        self.label: str | None = None  # a sweep's target this view serves (`for_target`); None: the whole run
        self.per_target: set[str] = set()  # the stages a sweep builds once per target, shared by every view
        self._lock = None
        existing = self.root / "recipe.yaml"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a directory")
        if not self._is_run_dir_or_new(existing):
            raise ConfigError(f"{self.root} exists and is not a prune run directory; choose another --out")
        self._take_lock()
        try:
            if existing.is_file():
                self._check_recipe(existing, recipe, update)
            dist.barrier()  # every process has checked the directory before the main one writes to it
            if dist.is_main():  # under accelerate launch only the main process writes run files
                with atomic_path(existing) as tmp:
                    tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))
            dist.barrier()
        except BaseException:
            self.close()
            raise

    def _is_run_dir_or_new(self, existing: Path) -> bool:
        """Whether `root` is absent, empty of all but a starting run's own files, or a run directory.

        Checked before the lock, so that a foreign directory gets no lock file; a run starting beside us
        writes recipe.yaml before any other file, so recipe.yaml is looked for *after* listing: a file
        listed before recipe.yaml appeared can only be foreign (or the starting run's own)."""
        if not self.root.exists():
            return True
        foreign = any(not _own(f.name) for f in self.root.iterdir())
        return not foreign or existing.is_file()

    def _check_recipe(self, existing: Path, recipe: dict, update: bool) -> None:
        try:
            old = yaml.safe_load(existing.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            if update:
                return
            raise ConfigError(f"{existing} is damaged ({type(e).__name__}); rerun with --update to rewrite it "
                              "(unchanged stages are still reused), or use another --out") from None
        if old != recipe and not update:
            a, b = _flatten(old) if isinstance(old, dict) else {}, _flatten(recipe)
            diff = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "recipe")
            raise ConfigError(
                f"run directory {self.root} was made by a different recipe ({diff}: {a.get(diff)!r} -> "
                f"{b.get(diff)!r}); use another --out, or --update to rerun only the stages that change")

    def _take_lock(self) -> None:
        """One writer per directory: the main process takes the lock (the other processes of one
        `accelerate launch` belong to the same run); every process learns whether it got it."""
        from filelock import FileLock, Timeout

        got = 0.0
        if dist.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / LOCK), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                pass
            else:
                self._lock = lock
                got = 1.0
                write_json(self.root / HOLDER, {"pid": os.getpid(), "host": socket.gethostname(),
                                                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                "command": " ".join(["prune", *sys.argv[1:]])})
        if dist.reduce_sum(torch.tensor([got], dtype=torch.float64)).item() < 1:
            raise ConfigError(f"run directory {self.root} is in use by another prune run ({self._holder()}); "
                              "wait for it to finish, or give another --out")

    def _holder(self) -> str:
        for _ in range(10):  # the holder writes its note just after taking the lock
            try:
                h = json.loads((self.root / HOLDER).read_text())
                return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return "holder unknown"

    def close(self) -> None:
        """Release the directory (the end of the run); safe to call twice."""
        if self._lock is not None:
            (self.root / HOLDER).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def for_target(self, label: str) -> "RunDir":
        """The directory as the stages of one target of a sweep see it: a stage in `per_target` lives in
        `targets/<label>/<stage>`, any other is the run's shared one. Views share the lock, keys and builds."""
        view = copy.copy(self)
        view.label = label
        return view

    @property
    def home(self) -> Path:
        """Where this view's own files go (`recipe.yaml`, `summary.json`): the run's root, or its target's."""
        return self.root if self.label is None else self.root / TARGETS / self.label

    def place(self, stage: str) -> str:
        """A stage's directory relative to the root."""
        return f"{TARGETS}/{self.label}/{stage}" if self.label is not None and stage in self.per_target else stage

    def path(self, stage: str) -> Path:
        return self.root / self.place(stage)

    def key(self, stage: str) -> str:
        """The key `stage` was last run (or reused) with in this view."""
        return self.keys[self.place(stage)]

    def run(self, stage: str, inputs: dict, build: Callable[[Path], dict | None], *, force: bool = False,
            distributed: bool = False, code: str | None = None) -> Path:
        """Reuse `stage` if its key matches, else build it into a temp dir and move it into place.

        The key covers the stage's inputs, the code that builds it (`code`, a `provenance.code_digest`)
        and the *build ids* of the stages it reads, so changing a stage's code, or rebuilding (or
        forcing) a stage, reruns it and everything downstream of it. Under `accelerate launch` a
        `distributed` stage is built by every process (each does its share and they combine), any
        other stage by the main process alone while the others wait; only the main process writes,
        and every process then takes the published build id, so all agree on what comes next.
        """
        upstream = {k: self.builds[self.place(k)] for k in inputs.get("reads", [])}
        key = stage_key({**inputs, "upstream": upstream, "prune_version": __version__, "code": code})
        where = self.place(stage)
        self.keys[where] = key
        final = self.path(stage)
        meta = final / "stage.json"
        if not force and meta.is_file():
            try:
                done = json.loads(meta.read_text())
            except (OSError, ValueError):
                done = {}
                self.log(f"[{stage}] {stage}/stage.json is damaged; rebuilding it and the stages that read it")
            if done.get("key") == key:
                problem = damage(final, done.get("files"))
                if problem is None:
                    self.builds[where] = done.get("build", key)
                    self.log(f"[{stage}] unchanged, reusing {final}")
                    return final
                self.log(f"[{stage}] {problem}; rebuilding it and the stages that read it")
        elif not force and final.exists():
            self.log(f"[{stage}] {stage}/stage.json is missing (an unfinished or damaged stage); rebuilding it")
        tmp = final.parent / f".{stage}.tmp"
        main = dist.is_main()
        if main:
            final.parent.mkdir(parents=True, exist_ok=True)
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
                                                "seconds": time.perf_counter() - start, "inputs": inputs,
                                                "files": file_record(tmp), **info})
                old = final.parent / f".{stage}.old"
                shutil.rmtree(old, ignore_errors=True)
                if final.exists():
                    final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        self.builds[where] = json.loads(meta.read_text())["build"]
        self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s")
        return final
