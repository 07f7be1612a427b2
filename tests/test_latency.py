"""The latency budget (`prune/latency.py`, `budget.allocate_latency`): interpolation and prediction are
exact on known tables, the allocation meets its target by score per millisecond under caps, tables are
cached by what they depend on, and a recipe with `prune.latency_ratio` plans with it. Nothing here
asserts a measured time (speed lives in benchmarks)."""

import dataclasses
import json

import pytest
import torch
from conftest import tiny_vit

from prune import latency as lat
from prune.budget import allocate_latency
from prune.recipe import PruneCfg
from prune.cli import main
from prune.errors import ConfigError


def table(depth=3):
    # heads 0..2: emptied attention 0.1, one head 0.5, two heads 0.6; FFN 0 -> 0.1, 32 -> 0.3, 64 -> 0.5
    return lat.LatencyTable(key={}, dense_ms=10.0, attn_ms=[0.1, 0.5, 0.6], ffn_widths=[0, 32, 64],
                            ffn_ms=[0.1, 0.3, 0.5], depth=depth)


def test_interpolation_and_prediction_are_linear_and_anchored_at_the_measured_dense_model():
    t = table()
    assert t.ffn(16) == pytest.approx(0.2) and t.ffn(48) == pytest.approx(0.4) and t.ffn(0) == 0.1
    assert t.predict({"ffn": [64] * 3, "heads": [2] * 3}) == pytest.approx(10.0)
    assert t.predict({"ffn": [32, 64, 0], "heads": [2, 0, 2]}) == pytest.approx(10.0 - 0.2 - 0.4 - 0.5)


def test_allocation_meets_the_target_by_score_per_millisecond():
    t = table()
    widths = {"ffn": [64] * 3, "heads": [2] * 3}
    scores = {"ffn": torch.ones(3, 64), "heads": torch.ones(3, 2)}
    settings = PruneCfg(scope="global", max_layer_ratio=1.0, latency_ratio=0.05)
    kept = allocate_latency(scores, widths, t, 9.5, settings)
    assert t.predict(kept) <= 9.5 + 1e-9
    # equal scores: a head saves more ms per unit of score than a neuron (0.1 ms, and 0.4 ms for the last
    # head, where the branch becomes its bias, against 0.00625 ms per neuron), so heads go and neurons stay
    assert kept["ffn"] == [64] * 3 and kept["heads"] == [0, 2, 2]
    scores["ffn"] = torch.full((3, 64), 0.01)  # neurons that matter little: they go instead
    kept = allocate_latency(scores, widths, t, 9.5, settings)
    assert kept["heads"] == [2, 2, 2] and sum(kept["ffn"]) < 192 and t.predict(kept) <= 9.5 + 1e-9
    with pytest.raises(ConfigError, match="latency_ratio .* is unreachable"):
        allocate_latency(scores, widths, t, 0.1, PruneCfg(scope="global", max_layer_ratio=0.5, latency_ratio=0.99))


def test_each_kind_is_calibrated_on_a_whole_model_probe_and_the_prediction_is_exact_there(monkeypatch):
    """Isolated branch steps scaled so that the prediction equals the measured whole-model probes (every
    attention emptied; every FFN at a quarter width), and still equals the measured dense model. The clock is
    replaced by known times, so the arithmetic is checked, not the machine."""
    from prune import bench

    known = {"attn0": 0.1, "attn1": 0.5, "attn2": 0.6, "ffn0": 0.1, "ffn1": 0.25, "ffn32": 0.3, "ffn64": 0.5,
             "dense": 10.0, "probe_heads": 9.25, "probe_ffn": 9.8}

    def clock(runners, shape, batch_sizes, warmup=3, repeats=20):
        return {n: {str(b): {"median_ms": known[n]} for b in batch_sizes} for n in runners}, {}

    monkeypatch.setattr(bench, "measure_until_stable", clock)
    model = tiny_vit(depth=3)  # 2 heads, 64 neurons per block
    t = lat.measure_table(model, lat.LatencySpec(runtime="pytorch", ffn_step=32), (3, 16, 16), log=lambda m: None)
    # the isolated steps predict 3 x 0.5 saved for emptied attention (measured 0.75) and 3 x 0.2 for FFN at 32
    # neurons (a quarter of 64 is under one grid step: one step) (measured 0.2)
    assert t.scale == pytest.approx({"heads": 0.5, "ffn": 1 / 3})
    assert t.probes["ffn"]["width"] == 32
    assert t.predict({"heads": [0] * 3}) == pytest.approx(9.25) and t.predict({"ffn": [32] * 3}) == pytest.approx(9.8)
    assert t.predict({"heads": [2] * 3, "ffn": [64] * 3}) == pytest.approx(10.0)
    assert t.predict({"heads": [1, 2, 2]}) == pytest.approx(10.0 - 0.5 * 0.1)  # linear in each kind's steps
    assert lat.LatencyTable(**json.loads(json.dumps(t.to_json()))).predict({"heads": [0] * 3}) == pytest.approx(9.25)
    known["probe_ffn"] = 10.0  # a probe the clock cannot tell from dense: the steps stay as timed
    t = lat.measure_table(model, lat.LatencySpec(runtime="pytorch", ffn_step=32), (3, 16, 16), log=lambda m: None)
    assert t.scale["ffn"] == 1.0 and t.predict({"ffn": [32] * 3}) == pytest.approx(10.0 - 0.6)


def test_tables_are_cached_by_what_they_depend_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path))
    model = tiny_vit(depth=2)
    spec = lat.LatencySpec(runtime="pytorch", ffn_step=32, batch_size=2)
    measure = lat.measure_table  # measured for real; a busy test machine must not stop it being cached here
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: dataclasses.replace(measure(*a, **k), noise={}))
    first = lat.latency_table(model, spec, (3, 16, 16), log=lambda m: None)
    assert len(first.attn_ms) == 3 and first.ffn_widths == [0, 1, 32, 64] and first.dense_ms > 0
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    def measured_again(*a, **k):
        raise RuntimeError("measured again")

    monkeypatch.setattr(lat, "measure_table", measured_again)
    again = lat.latency_table(model, spec, (3, 16, 16), log=lambda m: None)
    assert again.to_json() == first.to_json()
    with pytest.raises(RuntimeError, match="measured again"):  # another batch size is another table
        lat.latency_table(model, lat.LatencySpec(runtime="pytorch", ffn_step=32, batch_size=1), (3, 16, 16),
                          log=lambda m: None)


def synthetic_table(model, spec, input_size, **kw):
    """A table with the shape `measure_table` gives, from MACs instead of a clock: the recipe mechanics are
    tested without depending on how busy the machine is (measuring is tested above)."""
    key = lat.table_key(model, spec, input_size)
    grid = lat.ffn_grid(key["mlp"], spec.ffn_step)
    attn = [0.0 if h == 0 else 0.01 + 0.02 * h for h in range(key["heads"] + 1)]
    ffn = [0.0 if w == 0 else 0.01 + 0.001 * w for w in grid]
    return lat.LatencyTable(key=key, dense_ms=key["depth"] * (attn[-1] + ffn[-1]) + 0.05, attn_ms=attn,
                            ffn_widths=grid, ffn_ms=ffn, depth=key["depth"])


def test_a_recipe_with_a_latency_target_plans_and_records_its_prediction(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lat, "measure_table", synthetic_table)
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.units=[ffn,heads]", "prune.latency_ratio=0.3", "prune.max_layer_ratio=1.0",
            "prune.macs_ratio=null",
            "prune.latency.ffn_step=128"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    pr = json.loads((out / "prune/prune.json").read_text())
    t = lat.LatencyTable(**json.loads((out / "prune/latency_table.json").read_text()))
    lp = pr["latency_predicted"]
    assert lp["pruned_ms"] <= 0.7 * lp["dense_ms"] + 1e-9
    assert lp["pruned_ms"] == pytest.approx(t.predict({k: u["widths"] for k, u in pr["units"].items()}))


def test_the_report_sets_the_prediction_beside_the_measurement_and_anchors_it_to_the_measured_dense(
        tmp_path, monkeypatch):
    """Predicted ms (the table's clock) and measured ms (the bench's) side by side; the anchored prediction is
    the table's speed-up times the dense model the bench measured, a known identity."""
    import re

    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lat, "measure_table", synthetic_table)
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=0", "export.quantize=[]",
            "bench.batch_sizes=[1]", "bench.repeats=3", "bench.pytorch=false", "prune.units=[ffn,heads]",
            "prune.latency_ratio=0.3", "prune.max_layer_ratio=1.0", "prune.macs_ratio=null", "prune.latency.ffn_step=128"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    lp = json.loads((out / "prune/prune.json").read_text())["latency_predicted"]
    ort = json.loads((out / "summary.json").read_text())["latency"]["onnxruntime"]
    dense, pruned = ort["dense"]["1"]["median_ms"], ort["pruned"]["1"]["median_ms"]
    line = next(l for l in (out / "report/report.md").read_text().splitlines() if l.startswith("Latency budget"))
    assert f"predicted {lp['dense_ms']:.3f} ms dense, {lp['pruned_ms']:.3f} ms pruned" in line
    assert f"measured {dense:.3f} and {pruned:.3f} ms" in line
    anchored = float(re.search(r"once anchored to the dense model measured beside it: ([0-9.]+) ms", line).group(1))
    assert anchored == pytest.approx(dense * lp["pruned_ms"] / lp["dense_ms"], abs=1e-3)
    assert f"{(dense * lp['pruned_ms'] / lp['dense_ms']) / pruned - 1:+.1%} once anchored" in line


def test_latency_and_macs_targets_are_exclusive(tmp_path, capsys):
    assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "x"), "--set", "prune.latency_ratio=0.5",
                 "--set", "prune.macs_ratio=0.5"]) == 2
    assert "give one target" in capsys.readouterr().err


def test_prune_plan_prints_the_cut_before_surgery_and_its_macs_are_the_cut_model_s(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lat, "measure_table", synthetic_table)
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.units=[ffn,heads]", "prune.latency_ratio=0.4", "prune.max_layer_ratio=1.0",
            "prune.macs_ratio=null"]
    out = tmp_path / "run"
    argv = ["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]
    assert main(["plan", *argv]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert not (out / "prune").exists()  # no surgery yet
    assert "reachable" in printed and f"{plan['macs_planned']:,}" in printed and len(plan["blocks"]) == 6
    assert plan["ms_planned"] <= 0.6 * plan["ms_dense"] + 1e-9 and "predicted latency" in printed
    assert main(argv) == 0  # the run reuses the plan's scoring and cuts exactly the plan
    pr = json.loads((out / "prune/prune.json").read_text())
    assert pr["macs_pruned"] == plan["macs_planned"] and pr["plan"] == plan
    assert [b["ffn"] for b in plan["blocks"]] == pr["units"]["ffn"]["widths"]
    assert main(["plan", *argv, "--set", "prune.latency_ratio=0.9", "--set", "prune.max_layer_ratio=0.9"]) == 2
    # unreachable under the default caps: refused before work
    assert "unreachable" in capsys.readouterr().err


def test_the_latency_cost_model_is_the_tables_step_and_allocates_as_the_table_does():
    from prune.budget import CostModel, LatencyCost

    t = table()
    cost = LatencyCost(t)
    assert isinstance(cost, CostModel) and cost.dense() == 10.0
    assert cost.saving("heads", 0, 2) == pytest.approx(0.1) and cost.saving("heads", 0, 1) == pytest.approx(0.4)
    assert cost.saving("ffn", 2, 64) == pytest.approx(0.2 / 32)
    widths = {"ffn": [64] * 3, "heads": [2] * 3}
    scores = {"ffn": torch.rand(3, 64, generator=torch.Generator().manual_seed(0)), "heads": torch.ones(3, 2)}
    settings = PruneCfg(scope="global", max_layer_ratio=1.0, latency_ratio=0.05)
    assert allocate_latency(scores, widths, cost, 9.5, settings) == allocate_latency(scores, widths, t, 9.5, settings)


def _noisy(table):
    table.noise = {"noisy": True, "reasons": ["other processes used 80% of the CPU time during the measurement"]}
    return table


def test_a_noisy_table_is_measured_again_then_used_with_a_warning_or_refused_and_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path))
    model = tiny_vit(depth=2)
    spec = lat.LatencySpec(runtime="pytorch", ffn_step=32)
    calls, logs = [], []

    def busy_then_quiet(model, spec, input_size, **kw):
        calls.append(1)
        t = synthetic_table(model, spec, input_size)
        return _noisy(t) if len(calls) == 1 else t

    monkeypatch.setattr(lat, "measure_table", busy_then_quiet)
    t = lat.latency_table(model, spec, (3, 16, 16), log=logs.append)
    assert len(calls) == 2 and not t.noisy and any("measuring again" in m for m in logs)
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1  # the quiet one is kept

    for f in (tmp_path / "latency").glob("*.json"):
        f.unlink()
    calls.clear()
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: (calls.append(1), _noisy(synthetic_table(*a)))[1])
    t = lat.latency_table(model, spec, (3, 16, 16), log=logs.append)
    assert len(calls) == lat.NOISY_ATTEMPTS and t.noisy and "busy machine" in t.noise_warning()
    assert not list((tmp_path / "latency").glob("*.json"))  # not cached
    with pytest.raises(ConfigError, match="busy machine .*on_noise: warn"):
        lat.latency_table(model, spec, (3, 16, 16), on_noise="error", log=logs.append)

    # a noisy entry already in the cache (written by an older version) is measured again, not reused
    from prune.io import write_json

    key = lat.table_key(model, spec, (3, 16, 16))
    path = lat.cache_dir() / (lat.hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
    write_json(path, _noisy(synthetic_table(model, spec, (3, 16, 16))).to_json())
    calls.clear()
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: (calls.append(1), synthetic_table(*a))[1])
    assert not lat.latency_table(model, spec, (3, 16, 16), log=logs.append).noisy and len(calls) == 1


def test_a_plan_on_a_noisy_table_says_so():
    from prune.budget import block_plan, render

    model = tiny_vit(depth=2)
    table = _noisy(synthetic_table(model, lat.LatencySpec(runtime="pytorch", ffn_step=32), (3, 16, 16)))
    plan = block_plan(model, [lat.FFN, lat.HEADS], {"ffn": [32, 32]}, torch.zeros(1, 3, 16, 16), table)
    assert "busy machine" in plan["latency_warning"] and any(l.startswith("warning: ") for l in render(plan))
    quiet = block_plan(model, [lat.FFN, lat.HEADS], {"ffn": [32, 32]}, torch.zeros(1, 3, 16, 16),
                       synthetic_table(model, lat.LatencySpec(runtime="pytorch", ffn_step=32), (3, 16, 16)))
    assert "latency_warning" not in quiet and not any(l.startswith("warning") for l in render(quiet))


def test_the_whole_model_timings_and_an_unexplained_probe_make_a_table_noisy(monkeypatch):
    from prune import bench

    known = {"attn0": 0.1, "attn1": 0.5, "attn2": 0.6, "ffn0": 0.1, "ffn1": 0.25, "ffn32": 0.3, "ffn64": 0.5,
             "dense": 10.0, "probe_heads": 9.25, "probe_ffn": 5.0}  # FFN probe: 5 ms saved, its steps say 0.6

    def clock(runners, shape, batch_sizes, warmup=3, repeats=20):
        return ({n: {str(b): {"median_ms": known[n]} for b in batch_sizes} for n in runners},
                {"noisy": False, "reasons": []})

    monkeypatch.setattr(bench, "measure_until_stable", clock)
    t = lat.measure_table(tiny_vit(depth=3), lat.LatencySpec(runtime="pytorch", ffn_step=32), (3, 16, 16),
                          log=lambda m: None)
    assert t.noisy and t.scale["ffn"] == 1.0 and any("ffn probe" in r for r in t.noise["reasons"])
    assert not any("heads probe" in r for r in t.noise["reasons"])


def test_every_target_of_a_latency_sweep_plans_on_one_table_even_a_noisy_one(tmp_path, monkeypatch):
    """A noisy table is not cached on disk, so the run itself must keep it: measured (twice) once per run,
    not once per target, and every target's prediction comes from the same table."""
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: (calls.append(1), _noisy(synthetic_table(*a)))[1])
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.units=[ffn,heads]", "prune.latency_ratio=[0.2,0.3]",
            "prune.max_layer_ratio=1.0", "prune.macs_ratio=null", "prune.latency.ffn_step=128"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    assert len(calls) == lat.NOISY_ATTEMPTS
    dense = {json.loads(p.read_text())["latency_predicted"]["dense_ms"] for p in out.glob("targets/*/prune/prune.json")}
    warned = [json.loads(p.read_text())["latency_predicted"].get("warning") for p in out.glob("targets/*/prune/prune.json")]
    assert len(dense) == 1 and len(warned) == 2 and all("busy machine" in w for w in warned)


def test_a_branch_with_any_neuron_left_pays_its_fixed_cost():
    """Width 1 is on the grid, so a few neurons left are priced near the branch's launches and norm, not
    interpolated towards the emptied branch (which plans at 1-2 neurons made look almost free)."""
    assert lat.ffn_grid(768, 64)[:3] == [0, 1, 64] and lat.ffn_grid(64, 32) == [0, 1, 32, 64]
    t = lat.LatencyTable(key={}, dense_ms=10.0, attn_ms=[0.1, 0.5, 0.6], ffn_widths=[0, 1, 32, 64],
                         ffn_ms=[0.1, 0.25, 0.3, 0.5], depth=1)
    assert t.ffn(0) == pytest.approx(0.1) and t.ffn(2) == pytest.approx(0.25 + 0.05 / 31)
    assert t.predict({"ffn": [2]}) - t.predict({"ffn": [0]}) == pytest.approx(0.15 + 0.05 / 31)
