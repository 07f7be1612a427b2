"""What code built a stage: a content hash of the `prune` modules a stage module imports, transitively.

Stage keys include it (`RunDir.run`), so after an upgrade or an edit a rerun rebuilds exactly the
stages whose code changed, and the stages that read them, and reuses the rest. The imports are read
from the source with `ast` (every `import` statement, function-level ones included), so it works the
same for an installed package, an editable one and a copy, with or without git. The versions of the
libraries that compute the numbers are part of the hash too.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "prune"
ROOT = Path(__file__).resolve().parent
LIBRARIES = ("torch", "timm", "torch-pruning", "onnx", "onnxruntime", "safetensors", "numpy")


def _file(module: str) -> Path | None:
    """The source file of a module of this package (None: not one of its modules)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(module: str, source: str, is_package: bool) -> set[str]:
    """Absolute names of everything `module` imports (a `from x import y` yields x and x.y)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


@lru_cache(maxsize=None)
def closure(module: str) -> tuple[str, ...]:
    """`module` and every module of the package it imports, directly or not (their parents included)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            sub = ".".join(parts[:i])
            f = _file(sub)
            if f is None or sub in seen:
                continue
            seen[sub] = f
            todo.extend(_imports(sub, f.read_text(encoding="utf-8"), f.name == "__init__.py"))
    return tuple(sorted(seen))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """SHA-256 (16 hex digits) of the sources of `modules`' closures and the libraries' versions."""
    h = hashlib.sha256()
    for name in sorted(set().union(*(closure(m) for m in modules))):
        h.update(name.encode() + b"\0" + _file(name).read_bytes() + b"\0")
    for lib in LIBRARIES:
        h.update(f"{lib}={_version(lib)}\0".encode())
    return h.hexdigest()[:16]
