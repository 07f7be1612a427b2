"""Stage keys follow the code: editing a module reruns the stages built with it and their readers, and
reuses the rest (a copy of the package, so the test edits no installed file)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import prune
from prune.provenance import closure, code_digest

SETS = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "export.enabled=false",
        "bench.enabled=false"]
STAGES = ("importance", "prune", "baseline", "evaluate", "report")


def test_closure_follows_relative_and_function_level_imports():
    names = closure("prune.stages.importance")
    assert "prune.schedule" in names  # from ..schedule import SCHEDULES, ScoringJob
    assert "prune.criteria.paths" in names  # through prune.criteria's __init__
    assert "prune.stages.context" in names and "prune" in names  # the package's __init__ runs first
    assert "prune.report" not in names and "prune.stages.report" not in names  # (bench: via the latency tables)
    assert "prune.finetune" in closure("prune.stages.finetune")
    assert code_digest("prune.stages.report") != code_digest("prune.stages.baseline")


def _run(copy: Path, out: Path) -> dict[str, str]:
    """`prune --recipe quickstart.yaml` with the package copy first on the path; each stage's build id."""
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1"}
    argv = ["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in SETS], [])]
    code = ("import sys, prune; from prune.cli import main; "
            f"assert prune.__file__.startswith({str(copy)!r}), prune.__file__; sys.exit(main({argv!r}))")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=copy, check=True, capture_output=True, text=True)
    return {s: json.loads((out / s / "stage.json").read_text())["build"] for s in STAGES}


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def test_editing_a_module_reruns_its_stages_and_their_readers_only(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(Path(prune.__file__).parent, copy / "prune", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "run"
    first = _run(copy, out)
    assert _run(copy, out) == first  # nothing changed: everything reused

    _edit(copy / "prune" / "stages" / "evaluate.py")
    second = _run(copy, out)
    assert {s for s in STAGES if second[s] != first[s]} == {"evaluate", "report"}

    _edit(copy / "prune" / "report.py")
    third = _run(copy, out)
    assert {s for s in STAGES if third[s] != second[s]} == {"report"}

    _edit(copy / "prune" / "criteria" / "classic.py")  # imported by the run context: every stage rebuilds
    fourth = _run(copy, out)
    assert all(fourth[s] != third[s] for s in STAGES)
