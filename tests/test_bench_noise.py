"""A benchmark that shares its cores with other work says so: in `prune bench`, the bench stage and the report."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

from prune.bench import CpuWatch, noise_report
from prune.cli import main


@contextmanager
def cpu_load():
    """Busy processes on every core, as another job beside the benchmark would be."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_cpu_watch_sees_other_processes():
    import time

    with cpu_load():
        time.sleep(0.3)  # let them start
        with CpuWatch() as w:
            time.sleep(0.5)
    assert w.other_share() > 0.5


def test_spread_alone_flags_a_result():
    r = {"a": {"1": {"median_ms": 1.0, "p90_ms": 2.0}}, "b": {"1": {"median_ms": 1.0, "p90_ms": 1.05}}}
    rep = noise_report(r, 0.0)
    assert rep["noisy"] and "p90 is 2.00x the median (a b1)" in rep["reasons"][0]
    assert not noise_report({"b": r["b"]}, 0.01)["noisy"]
    # sub-millisecond jitter (0.5 -> 0.7 ms) is not noise
    assert not noise_report({"c": {"1": {"median_ms": 0.5, "p90_ms": 0.7}}}, 0.0)["noisy"]


def test_a_busy_bench_is_flagged_in_the_table_and_the_report(tmp_path, capsys):
    with cpu_load():
        assert main(["bench", "digits-vit", "--repeats", "5", "--batch-sizes", "1"]) == 0
        out = capsys.readouterr().out
        sets = ["importance.calibration_images=32", "data.eval_images=40", "finetune.epochs=0", "export.enabled=false",
                "bench.onnxruntime=false", "bench.repeats=5", "bench.batch_sizes=[1]"]
        assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet",
                     *sum([["--set", s] for s in sets], [])]) == 0
    assert "warning: noisy measurement" in out and "other processes used" in out and "~" in out
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["bench"]["noise"]["pytorch"]["noisy"]
    assert "pytorch latency is noisy" in (tmp_path / "run/report/report.md").read_text()
    assert "warning: pytorch latency is noisy" in capsys.readouterr().out
