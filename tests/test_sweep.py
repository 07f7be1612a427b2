"""Budget sweeps: a list of targets in one recipe gives one pruned model per target, the stages no target
changes built once, and a report with the accuracy-latency front and the recommended artifact."""

import itertools
import json
import random

import pytest

from prune.cli import main
from prune.front import on_front, recommend
from prune.recipe import load_recipe
from prune.errors import ConfigError

FAST = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "prune.units=[ffn,heads]",
        "export.quantize=[dynamic]", "bench.batch_sizes=[1,4]", "bench.repeats=3", "bench.warmup=1",
        "bench.pytorch=false"]


def run(out, targets, *extra):
    sets = FAST + [f"prune.macs_ratio={targets}"]
    return main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], []),
                 *extra])


def brute_front(points, b):
    """The front by its definition: no point at least as good on both axes and better on one."""
    def dominates(q, p):
        return (q["ms"][b] <= p["ms"][b] and q["top1"] >= p["top1"]
                and (q["ms"][b], q["top1"]) != (p["ms"][b], p["top1"]))
    return [not any(dominates(q, p) for q in points) for p in points]


def test_front_and_recommendation_match_their_definitions():
    rng = random.Random(0)
    for _ in range(200):
        pts = [{"ms": {"1": rng.choice([1.0, 1.5, 2.0, 2.5, 3.0])}, "top1": rng.choice([0.9, 0.92, 0.95, 0.97]),
                "shipped": rng.random() < 0.5} for _ in range(rng.randint(1, 8))]
        assert on_front(pts, "1") == brute_front(pts, "1")
        best = recommend(pts, "1", 0.97, 0.03)
        ok = [p for p in pts if p["top1"] >= 0.94]
        if not ok:
            assert best is None
            continue
        fastest = min(p["ms"]["1"] for p in ok)
        assert pts[best]["ms"]["1"] == fastest
        assert pts[best]["top1"] == max(p["top1"] for p in ok if p["ms"]["1"] == fastest)
        assert on_front(pts, "1")[best] or any(p["shipped"] is False for p in pts)  # a front point, or its twin
    twins = [{"ms": {"1": 1.0}, "top1": 0.9, "shipped": False}, {"ms": {"1": 1.0}, "top1": 0.9, "shipped": True}]
    assert recommend(twins, "1", 0.9, 0.0) == 1  # a one-shot model and its shipped twin: the shipped file


@pytest.mark.parametrize("sets, msg", [
    (["prune.macs_ratio=[0.3,0.3]"], "lists a target twice"),
    (["prune.macs_ratio=[0.3,1.2]"], "recipe key prune.macs_ratio: must be in (0, 1), or a list of such values"),
    (["prune.macs_ratio=[]"], "a sweep lists 1 to 16 targets"),
    (["prune.ratio=[0.3,0.4]", "prune.macs_ratio=[0.2,0.3]"], "sweep one target"),
    (["prune.ratio=[0.3,0.4]", "prune.macs_ratio=0.3"], "sweep prune.macs_ratio instead"),
    (["prune.macs_ratio=null", "prune.max_layer_ratio=0.9", "prune.ratio=[0.3,0.95]"],
     "with prune.ratio 0.95: prune.max_layer_ratio 0.9 < prune.ratio 0.95"),
])
def test_bad_sweeps_are_refused_with_the_target_that_fails(sets, msg):
    with pytest.raises(ConfigError, match=None) as e:
        load_recipe("quickstart", sets)
    assert msg in str(e.value)


def test_a_sweep_is_one_scalar_recipe_per_target():
    r = load_recipe("quickstart", ["prune.macs_ratio=null", "prune.latency_ratio=[0.2,0.4]"])
    assert [(label, t.prune.latency_ratio) for label, t in r.sweep()] == [("latency_ratio-0.2", 0.2),
                                                                          ("latency_ratio-0.4", 0.4)]
    assert load_recipe("quickstart", ["prune.macs_ratio=null", "prune.ratio=0.3"]).sweep()[0][0] is None


def test_a_sweep_shares_what_no_target_changes_and_a_new_target_reuses_it(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run(out, "[0.3,0.5]") == 0
    first = capsys.readouterr().out
    assert "recommended (fastest within 1.0 points of dense)" in first
    assert run(out, "[0.3,0.5,0.4]", "--update") == 0
    log = capsys.readouterr().out
    for stage in ("importance", "baseline"):  # target-independent: one shared directory, reused
        assert f"[{stage}] unchanged, reusing {out / stage}" in log
    for label, stage in itertools.product(("macs_ratio-0.3", "macs_ratio-0.5"), ("prune", "evaluate", "export", "bench")):
        assert f"[{stage}] unchanged, reusing {out / 'targets' / label / stage}" in log
    assert "[prune] running" in log and log.count("[prune] running") == 1  # the new target only
    assert "[sweep] running" in log

    summary = json.loads((out / "summary.json").read_text())
    s = summary["sweep"]
    assert s["targets"] == ["macs_ratio-0.3", "macs_ratio-0.5", "macs_ratio-0.4"] == list(summary["targets"])
    names = {p["name"] for p in s["points"]}
    assert {"dense", "dense.int8-dynamic"} <= names
    for v in ("0.3", "0.5", "0.4"):
        assert {f"{v} pruned", f"{v} pruned.int8-dynamic"} <= names
    for b in s["batch_sizes"]:
        assert [p["front"][b] for p in s["points"]] == brute_front(s["points"], b)
    # each target's figures are its own run's, and every point names the file it was measured on
    for p in s["points"]:
        if p["target"] is not None:
            m = summary["targets"][p["target"]]
            assert p["top1"] == next(a for a in (m["accuracy"].get(p["artifact"]),
                                                  (m["onnx"].get(p["artifact"]) or {}).get("int8")) if a)["top1"]
            assert p["files"]["latency"]["path"].startswith(f"targets/{p['target']}/export/")
            assert (out / p["files"]["latency"]["path"]).is_file()
    best = s["recommended"]
    assert best is not None and s["points"][best]["top1"] >= s["dense_top1"] - 0.01
    assert all(p["ms"]["1"] >= s["points"][best]["ms"]["1"] for p in s["points"] if p["top1"] >= s["dense_top1"] - 0.01)
    md = (out / "sweep/sweep.md").read_text()
    assert "**Recommended**" in md and (out / "sweep/front.png").stat().st_size > 10_000
    # a target's directory reads as a run of its own; the sweep's root asks for one
    assert main(["bench", str(out / "targets/macs_ratio-0.5"), "--repeats", "2", "--batch-sizes", "1"]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--repeats", "2"]) == 2
    err = capsys.readouterr().err
    assert "is a sweep over prune.macs_ratio" in err and "macs_ratio-0.4" in err


def test_a_sweep_without_the_bench_reports_accuracy_and_no_front(tmp_path, capsys):
    out = tmp_path / "nobench"
    assert run(out, "[0.3,0.5]", "--set", "bench.enabled=false", "--set", "export.enabled=false") == 0
    assert "no latency was measured" in capsys.readouterr().out
    s = json.loads((out / "sweep/sweep.json").read_text())
    assert s["batch_sizes"] == [] and s["recommended"] is None and not (out / "sweep/front.png").exists()
    md = (out / "sweep/sweep.md").read_text()
    assert "No latency was measured" in md
    for p in s["points"]:  # every point's row, with its own top-1
        assert f"| {p['name']} | {p['top1']:.4f} |" in md
    assert {"0.3 pruned", "0.5 pruned", "dense"} <= {p["name"] for p in s["points"]}
