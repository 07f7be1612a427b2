"""A run directory that cannot lie: every stage's files are verified before reuse, one run writes a
directory at a time, a killed run's lock does not block, and damaged files a user hands over are one
error line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prune.cli import main

SMALL = ["paths.images_per_class=2", "paths.steps=2", "importance.calibration_images=32", "data.eval_images=40",
         "importance.kind=path_frequency", "finetune.epochs=1", "finetune.train_images=64", "bench.enabled=false",
         "export.quantize=[]"]
STAGES = ["paths", "importance", "prune", "baseline", "evaluate", "finetune", "export", "report"]
# what reads what (the stages' `reads`): a damaged stage is rebuilt with everything downstream of it
DOWNSTREAM = {"paths": {"importance", "prune", "evaluate", "finetune", "export", "report"},
              "importance": {"prune", "evaluate", "finetune", "export", "report"},
              "prune": {"evaluate", "finetune", "export", "report"}, "baseline": {"report"},
              "evaluate": {"report"}, "finetune": {"export", "report"}, "export": {"report"}, "report": set()}
MAIN_FILE = {"paths": "stats.safetensors", "importance": "importance.safetensors", "prune": "model.safetensors",
             "baseline": "metrics.json", "evaluate": "metrics.json", "finetune": "model.safetensors",
             "export": "pruned.onnx", "report": "report.md"}


def args(out, *extra):
    return ["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in SMALL], []),
            *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir") / "run"
    assert main(args(root)) == 0
    return root


def ran(out: str) -> set[str]:
    return {s for s in STAGES if f"[{s}] running" in out}


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("stage,how", [(s, "truncate") for s in STAGES] + [(s, "delete") for s in ("paths", "finetune")])
def test_a_damaged_stage_is_rebuilt_with_exactly_what_reads_it(finished, tmp_path, capsys, stage, how):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    victim = run / stage / MAIN_FILE[stage]
    if how == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[:len(data) // 2])
    else:
        victim.unlink()
    capsys.readouterr()
    assert main(args(run)) == 0
    out = capsys.readouterr().out
    assert f"{stage}/{MAIN_FILE[stage]} is " in out and "rebuilding it and the stages that read it" in out
    assert ran(out) == {stage} | DOWNSTREAM[stage]
    for s in set(STAGES) - {stage} - DOWNSTREAM[stage]:
        assert f"[{s}] unchanged" in out
    for f in ("prune/model.safetensors", "finetune/model.safetensors", "export/pruned.onnx"):
        assert same_bytes(run / f, finished / f), f


def test_a_changed_file_of_the_same_size_is_caught_by_its_hash(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    victim = run / "prune/model.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte: same size, different content
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(args(run)) == 0
    out = capsys.readouterr().out
    assert "prune/model.safetensors has changed since it was written" in out
    assert ran(out) == {"prune"} | DOWNSTREAM["prune"]
    assert same_bytes(run / "prune/model.safetensors", finished / "prune/model.safetensors")


def test_the_fine_tune_record_without_its_model_is_not_trusted(finished, tmp_path, capsys):
    """The reported failure: finetune/stage.json present, finetune/model.safetensors gone. Export must not
    fall back to the un-fine-tuned model, and the summary must name the file each figure came from."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "finetune/model.safetensors").unlink()
    assert main(["export", str(run), "--out", str(tmp_path / "x.onnx")]) == 2
    line = first_error_line(capsys)
    assert "fine-tuned model cannot be trusted (finetune/model.safetensors is missing)" in line
    assert not (tmp_path / "x.onnx").exists()
    assert main(args(run)) == 0
    summary = json.loads((run / "summary.json").read_text())
    on = summary["measured_on"]
    assert on["accuracy"]["finetuned"]["path"] == "finetune/model.safetensors"
    record = json.loads((run / "finetune/stage.json").read_text())["files"]["model.safetensors"]
    assert on["accuracy"]["finetuned"]["sha256"] == record["sha256"]
    assert on["onnx"]["pruned"]["path"] == "export/pruned.onnx"


def test_a_damaged_stage_record_is_rebuilt(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "evaluate/stage.json").write_text('{"stage": "evaluate", "ke')
    capsys.readouterr()
    assert main(args(run)) == 0
    out = capsys.readouterr().out
    assert "evaluate/stage.json is damaged" in out and ran(out) == {"evaluate", "report"}


LOCKER = textwrap.dedent("""
    import sys, time
    from prune.run import RunDir
    held = RunDir(sys.argv[1], {"name": "holder"})
    print("locked", flush=True)
    time.sleep(600)
""")


def test_two_runs_on_one_directory_one_completes_and_the_other_stops_at_once(tmp_path):
    out = tmp_path / "both"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prune.cli", *args(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    err = loser[2].strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune: error: run directory") and "in use by another prune run" in err[0]
    assert "pid" in err[0] and "Traceback" not in loser[2]
    # the directory is whole: a third run reuses every stage
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stderr
    assert all(f"[{s}] unchanged" in third.stdout for s in STAGES)


def test_a_run_starting_beside_us_is_in_use_not_foreign(tmp_path, monkeypatch):
    """The race the two-runs test hit once: a second run lists the directory while the first writes its
    holder note, recipe.yaml and a stage; it must get "in use", not "not a prune run directory"."""
    from prune import io
    from prune.errors import ConfigError
    from prune.run import HOLDER, RunDir

    out = tmp_path / "racing"
    out.mkdir()
    with io.atomic_path(out / HOLDER):  # the holder note as the first run writes it (its temporary name)
        RunDir(out, {"name": "second"}).close()  # a half-written holder note is a starting run's own file
    (out / "recipe.yaml").unlink()

    listing = Path.iterdir

    def first_run_writes_meanwhile(self):
        names = list(listing(self))
        if self == out:  # between the listing and any later look, the first run gets ahead
            (out / "recipe.yaml").write_text("name: first\n")
            (out / ".paths.tmp").mkdir()
            names = list(listing(self))
        return iter(names)

    monkeypatch.setattr(Path, "iterdir", first_run_writes_meanwhile)
    from filelock import FileLock
    with FileLock(str(out / ".lock"), timeout=0, thread_local=False):  # the first run holds the lock
        with pytest.raises(ConfigError, match="in use by another prune run"):
            RunDir(out, {"name": "second"})


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path, capsys):
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(args(out)) == 2  # held by a live process: refused, naming it
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another prune run" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock.holder").exists()  # the killed holder left its note behind
    assert main(args(out, "--update")) == 0  # ... but the OS released its lock (--update: the holder's recipe differs)


def first_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage_structure"])
def test_readers_of_damaged_files_give_one_error_line(finished, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if damage == "truncate":
        for stage in ("prune", "finetune"):
            f = run / stage / "model.safetensors"
            f.write_bytes(f.read_bytes()[:1000])
        name, needle = "model.safetensors", "model.safetensors is not a readable safetensors file"
    else:
        for stage in ("prune", "finetune"):
            (run / stage / "structure.json").write_text('{"format": "prune.PrunedViT/1", "widths": [')
        name, needle = "structure.json", "structure.json is damaged"
    bench = ["--repeats", "1", "--warmup", "0", "--batch-sizes", "1"]
    # a run directory: its stage record catches the damage before anything is read
    for argv in (["export", str(run), "--out", str(tmp_path / "m.onnx")], ["bench", str(run), *bench]):
        assert main(argv) == 2, argv
        line = first_error_line(capsys)
        assert line.startswith("prune: error: ") and f"cannot be trusted (finetune/{name} is " in line, (argv, line)
    # a model directory handed over on its own: the reader itself
    for argv in (["export", str(run / "prune"), "--out", str(tmp_path / "p.onnx")],
                 ["bench", str(run / "finetune"), *bench]):
        assert main(argv) == 2, argv
        line = first_error_line(capsys)
        assert line.startswith("prune: error: ") and needle in line, (argv, line)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p.onnx").exists()
    from prune.errors import ConfigError
    from prune.checkpoint import load_pruned

    with pytest.raises(ConfigError, match=needle.split()[-1]):
        load_pruned(run / "prune")


def test_specialize_from_a_run_with_damaged_paths_rediscovers_them(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    f = run / "paths/stats.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    assert main(["specialize", str(run), "--classes", "1,7", "--out", str(tmp_path / "spec"), "--quiet",
                 "--set", "finetune.epochs=0", "--set", "export.enabled=false"]) == 0
    out = capsys.readouterr().out
    assert "paths/stats.safetensors is " in out and "[paths] running" in out


def test_a_corrupt_local_model_is_one_error_line(tmp_path, capsys):
    from prune.models import ASSETS

    model = tmp_path / "model"
    shutil.copytree(ASSETS / "digits_vit", model)
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    assert main(args(tmp_path / "r", "--set", f"model.name={model}")) == 2
    line = first_error_line(capsys)
    assert "model.safetensors is not a readable safetensors file" in line and not (tmp_path / "r").exists()
