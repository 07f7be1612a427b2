"""Smoke tests of the benchmark scripts' quick modes (the full runs are not part of CI)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    """A script as a module; its directory on sys.path, as when it runs (`python benchmarks/x.py`)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_criteria_sweep_quick(tmp_path):
    load("criteria_sweep").main(["--quick", "--kinds", "path_jas,random", "--out", str(tmp_path / "sweep")])
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [(r["kind"], r["compensate"]) for r in rows] == [
        ("path_jas", "none"), ("path_jas", "mean"), ("random", "none"), ("random", "mean")]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert float(rows[-1]["top1"]) == summary["accuracy"]["pruned"]["top1"]


def test_criteria_sweep_seeds_and_finetune(tmp_path):
    out = tmp_path / "sweep"
    load("criteria_sweep").main(["--quick", "--kinds", "magnitude_l1,random", "--compensate", "none",
                                 "--seeds", "0,1", "--finetune-epochs", "1", "--out", str(out)])
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [(r["kind"], r["seed"]) for r in rows] == [("magnitude_l1", "0"), ("random", "0"), ("random", "1")]  # seed-major
    summary = json.loads((out / "summary.json").read_text())
    assert float(rows[-1]["finetuned_top1"]) == summary["accuracy"]["finetuned"]["top1"]
    assert summary["finetune"]["train_images"] == 64


def test_path_speed_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "speed.json"
    monkeypatch.setattr("sys.argv", ["path_speed.py", "--model", "digits-vit", "--images", "2",
                                     "--images-per-chunk", "1", "--steps", "2", "--rounds", "1", "--json", str(out)])
    load("path_speed").main()
    res = json.loads(out.read_text())
    assert res["released_paths_identical"] and res["no_reuse_paths_identical"]
    assert res["locate_s"] > 0 and res["bare_s"] > 0


def test_paper_claims_quick(tmp_path):
    load("paper_claims").main(["--quick", "--out", str(tmp_path / "claims")])
    res = json.loads((tmp_path / "claims" / "paper_claims.json").read_text())["methods"]
    assert set(res) == {"jas", "layer_ig", "influence_pattern", "activation", "random"}
    assert all(0 < r["consistency"] <= 1 for r in res.values())


def test_vit_b16_extrapolation_quick(tmp_path):
    out = tmp_path / "x.json"
    load("vit_b16_extrapolation").main(["--quick", "--batch-sizes", "1", "--repeats", "1", "--memory-images", "1,2",
                                        "--memory-steps", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    assert [p["rows"] for p in res["discovery_memory"]["points"]] == [2, 4]
    assert res["macs"]["pruned"] < res["macs"]["dense"] and "1" in res["latency_pytorch_cpu"]["pruned"]


def test_discovery_budget_quick(tmp_path):
    res = load("discovery_budget").main(["--quick", "--out", str(tmp_path / "budget"), "--json", str(tmp_path / "b.json")])
    assert [(r["images_per_class"], r["top_k"]) for r in res["rows"]] == [(1, 1), (2, 1), (1, 2)]
    assert [r["images"] for r in res["rows"]] == [10, 20, 10]
    assert all(r["discovery_s"] > 0 and r["peak_rss_mb"] > 0 for r in res["rows"])
    assert json.loads((tmp_path / "b.json").read_text()) == res


def test_summarize_aggregates_seeds_and_rejects_conflicting_reruns(tmp_path, capsys):
    head = "ratio,kind,scope,compensate,seed,top1,top5,finetuned_top1,dense_top1,images,macs_ratio,path_seconds\n"
    (tmp_path / "criteria_sweep_a.csv").write_text(
        head + "0.5,taylor,,none,0,0.60,0.9,,0.62,100,0.7,\n0.5,taylor,,none,1,0.62,0.9,0.615,0.62,100,0.7,\n"
        "0.3,taylor,,none,0,0.61,0.9,,0.62,100,0.8,\n")
    (tmp_path / "criteria_sweep_old_tokens.csv").write_text(  # old format: no scope/seed columns
        "ratio,kind,compensate,top1,top5,dense_top1,images,macs_ratio\n0.5,path_jas,none,0.55,0.9,0.62,100,0.7\n")
    summarize = load("summarize")
    summarize.main(["--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| taylor | 61.00 | - | 61.00 ± 1.41 (n=2) | - |" in out  # mean 61, sample sd sqrt(2)
    assert "| path_jas (tokens, K=5) | - | - | 55.00 | - |" in out
    assert "| taylor | 50% | 1 | 62.00 | 61.50 | -0.50 |" in out
    assert "| taylor | 50% | none | 60.00 | 62.00 | 61.00 ± 1.41 |" in out
    assert (tmp_path / "criteria_vs_sparsity.png").stat().st_size > 0
    (tmp_path / "criteria_sweep_b.csv").write_text(head + "0.5,taylor,,none,0,0.59,0.9,,0.62,100,0.7,\n")
    with pytest.raises(SystemExit, match="seed 0: top1 0.6"):
        summarize.main(["--results", str(tmp_path)])


def test_criteria_sweep_budgets_and_progressive(tmp_path):
    out = tmp_path / "sweep"
    load("criteria_sweep").main(["--quick", "--kinds", "taylor,path_frequency", "--compensate", "none",
                                 "--prune-scopes", "uniform,global", "--modes", "oneshot,progressive",
                                 "--out", str(out)])
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    # path_frequency cannot score one block on a pruned model: no progressive rows for it
    assert [(r["kind"], r["prune_scope"], r["mode"]) for r in rows] == [
        ("taylor", "uniform", "oneshot"), ("taylor", "uniform", "progressive"), ("taylor", "global", "oneshot"),
        ("taylor", "global", "progressive"), ("path_frequency", "uniform", "oneshot"),
        ("path_frequency", "global", "oneshot")]
    assert all(float(r["scoring_seconds"]) >= 0 for r in rows)
    assert rows[1]["widths"] == " ".join(["128"] * 6) and rows[2]["widths"] != rows[1]["widths"]


def test_scoring_cost_quick(tmp_path):
    out = tmp_path / "cost.json"
    load("scoring_cost").main(["--quick", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["ratio_to_discovery_tokens"]["discovery_tokens"] == 1.0
    assert {"path_attribution_progressive", "taylor_progressive", "activation_taylor_oneshot"} <= set(res["seconds"])


def test_train_step_speed_quick(tmp_path):
    out = tmp_path / "speed.json"
    load("train_step_speed").main(["--quick", "--json", str(out)])
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"fp32 fused", "fp32 explicit", "bf16 fused", "bf16 explicit"}
    base = rows["fp32 fused"]["step_s"]
    assert all(r["step_s"] > 0 and abs(r["speedup_vs_fp32_fused"] - base / r["step_s"]) < 1e-9 for r in rows.values())


def test_specialize_sweep_quick(tmp_path):
    load("specialize_sweep").main(["--quick", "--configs", "path_frequency,magnitude_l1",
                                   "--finetune-configs", "magnitude_l1", "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "specialize.csv")))
    assert [(r["config"], r["finetuned_top1"] != "") for r in rows] == [("path_frequency", False), ("magnitude_l1", True)]
    assert all(int(r["size"]) == 2 and float(r["macs_ratio"]) < 1 for r in rows)
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost[0]["what"] == "specialise_seconds" and cost[0]["from_run"] > 0 and cost[0]["from_scratch"] > 0
    assert [c["config"] for c in cost[1:]] == ["path_frequency", "magnitude_l1"]
    assert all(c["macs"] < c["macs_dense"] and c["ort_b1_ms"] > 0 for c in cost[1:])


def test_summarize_block_budget_table_per_model(tmp_path, capsys):
    head = ("ratio,kind,scope,top_k,compensate,seed,prune_scope,mode,budget_kind,objective,top1,top5,finetuned_top1,"
            "dense_top1,images,macs_ratio,path_seconds,scoring_seconds,widths\n")
    (tmp_path / "i9_m1_a.csv").write_text(
        head + "0.5,taylor,,,none,0,global,oneshot,,,0.60,0.9,,0.62,100,0.7,,1.0,1 2\n"
        "0.5,taylor,,,none,1,global,oneshot,,,0.62,0.9,,0.62,100,0.7,,1.0,1 2\n"
        "0.5,taylor,,,none,0,global,oneshot,path_attribution,,0.61,0.9,,0.62,100,0.7,,1.0,1 2\n")
    (tmp_path / "i9_m2_b.csv").write_text(head + "0.7,path_attribution,,,none,0,uniform,progressive,,logprob,"
                                                 "0.5,0.9,0.55,0.6,100,0.5,,2.0,1 1\n")
    summarize = load("summarize")
    summarize.main(["--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| configuration | m1 50% | m1 70% | m2 50% | m2 70% |" in out
    assert "| taylor, global | 61.00 ± 1.41 (n=2) | - | - | - |" in out
    assert "| taylor neurons in path_attribution budgets | 61.00 | - | - | - |" in out
    assert "| path_attribution, progressive | - | - | - | 50.00 |" in out
    assert "| m2 | path_attribution, progressive | 70% | 0 | 50.00 | 55.00 |" in out
    assert (tmp_path / "budgets_progressive.png").stat().st_size > 0
    (tmp_path / "i9_m1_c.csv").write_text(head + "0.5,taylor,,,none,1,global,oneshot,,,0.5,0.9,,0.62,100,0.7,,1.0,1 2\n")
    with pytest.raises(SystemExit, match="m1 taylor, global seed 1"):
        summarize.main(["--results", str(tmp_path)])


def test_attribution_variants_quick(tmp_path):
    out = tmp_path / "variants.json"
    load("attribution_variants").main(["--quick", "--json", str(out)])
    res = json.loads(out.read_text())
    names = {(r["variant"], r["scope"]) for r in res["rows"]}
    assert ("IG log p, signed", "uniform") in names and ("IG log p, abs, two rounds", "global") in names
    assert all(0 <= r["top1"] <= 1 for r in res["rows"]) and res["dense_top1"] > 0.9


def test_summarize_specialisation_tables_average_over_complete_subsets(tmp_path, capsys):
    head = "classes,size,config,kind,prune_scope,ratio,dense_top1,top1,finetuned_top1,images,macs_ratio,widths\n"
    (tmp_path / "specialize_m.csv").write_text(
        head + "1-2,2,taylor,taylor,uniform,0.5,0.90,0.80,0.85,20,0.7,1 1\n"
        "1-2,2,magnitude_l1,magnitude_l1,uniform,0.5,0.90,0.60,,20,0.7,1 1\n"
        "3-4,2,taylor,taylor,uniform,0.5,0.96,0.70,0.75,20,0.7,1 1\n"
        "3-4,2,magnitude_l1,magnitude_l1,uniform,0.5,0.96,0.50,,20,0.7,1 1\n"
        "5-6,2,taylor,taylor,uniform,0.5,0.50,0.10,0.10,20,0.7,1 1\n")  # 5-6 unfinished: not in the mean
    (tmp_path / "specialize_cost_m.json").write_text(json.dumps([
        {"what": "specialise_seconds", "classes": "1-2", "size": 2, "from_run": 10.0, "from_scratch": 40.0},
        {"what": "deploy", "classes": "1-2", "size": 2, "config": "taylor", "ratio": 0.5, "params_dense": 100,
         "params": 60, "macs_dense": 1000, "macs": 700, "ort_b1_ms_dense": 2.0, "ort_b1_ms": 1.0,
         "ort_b32_ms_dense": 30.0, "ort_b32_ms": 20.0}]))
    load("summarize").main(["--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| {1, 2} | dense (subset logits) | 90.00 |" in out and "| | magnitude_l1 | 60.00 |" in out
    assert "| | taylor | 10.00 -> 10.00 |" in out and "| {5, 6} | dense (subset logits) | 50.00 |" in out
    assert "mean over the 2 complete 2-class subsets (1-2, 3-4):" in out
    assert "| 2 classes | dense (subset logits) | 93.00 |" in out
    assert "| | taylor | 75.00 -> 80.00 |" in out and "| | magnitude_l1 | 55.00 |" in out
    assert "10 s from the full run's paths, 40 s from scratch (4.0x)" in out
    assert "| taylor | 50% | 100 -> 60 | 0.700 | 2.00 -> 1.00 (2.00x) | 30.0 -> 20.0 (1.50x) |" in out


def test_summarize_variants_table_one_column_per_ratio(tmp_path, capsys):
    (tmp_path / "attribution_variants_m.json").write_text(json.dumps({"dense_top1": 0.6, "rows": [
        {"variant": "IG log p, abs", "scope": "global", "ratio": 0.5, "top1": 0.59},
        {"variant": "IG log p, abs", "scope": "global", "ratio": 0.7, "top1": 0.58},
        {"variant": "IG log p, signed", "scope": "uniform", "ratio": 0.7, "top1": 0.4}]}))
    load("summarize").main(["--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| variant | budgets | 50% | 70% |" in out and "| dense | | 60.00 | 60.00 |" in out
    assert "| IG log p, abs | global | 59.00 | 58.00 |" in out and "| IG log p, signed | uniform | - | 40.00 |" in out


def test_heads_budget_quick(tmp_path):
    """Every method at one MACs target: reached (or marked unreachable), exported, timed, recovered, plotted."""
    out = tmp_path / "hb"
    load("heads_budget").main(["--quick", "--out", str(out), "--recover-precision", "bf16"])
    rows = {r["method"]: r for r in csv.DictReader(open(out / "oneshot.csv"))}
    assert set(rows) == {"ffn", "heads", "both", "recipe_cut", "recipe", "tp"}
    assert rows["heads"]["note"] == "unreachable under the caps"  # heads alone hold less than half the MACs
    for m in ("ffn", "both", "recipe_cut", "recipe", "tp"):
        assert 0.5 <= float(rows[m]["macs_removed"]) < 0.56 and 0 < float(rows[m]["top1"]) <= 1
    # the shipped cap removes at most a third of every block's heads; the re-fits change weights, not the structure
    from prune.recipe import load_recipe

    cap = load_recipe("cifar10_vit_tiny_50pct.yaml").prune.max_layer_ratio["heads"]
    dense_heads = 4  # the digits model's
    heads = [int(h) for h in rows["recipe_cut"]["heads"].split()]
    assert all(h >= dense_heads - int(cap * dense_heads) for h in heads) and min(heads) < dense_heads
    assert rows["recipe"]["heads"] == rows["recipe_cut"]["heads"]
    import torch
    from safetensors.torch import load_file

    cut, refit = (load_file(out / "models" / f"{m}_0.5" / "model.safetensors") for m in ("recipe_cut", "recipe"))
    assert torch.equal(cut["blocks.0.mlp.fc1.weight"], refit["blocks.0.mlp.fc1.weight"])  # the cut is the same
    assert not torch.equal(cut["head.weight"], refit["head.weight"])  # and the classifier was re-fitted
    lat = {(r["artifact"], r["batch"]) for r in csv.DictReader(open(out / "latency.csv"))}
    assert {("dense", "1"), ("both_0.5", "32"), ("tp_0.5", "1")} <= lat
    rec = list(csv.DictReader(open(out / "recover.csv")))
    assert {r["method"] for r in rec} == {"both", "tp"} and {r["precision"] for r in rec} == {"bf16"}
    assert all(float(r["holdout_best"]) >= float(r["holdout_oneshot"]) for r in rec)  # never worse than one-shot
    assert (out / "pareto.png").is_file()


def test_one_pass_scoring_agrees_with_per_block(tmp_path):
    load("one_pass_scoring").main(["--images", "16", "--json", str(tmp_path / "s.json")])
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["max_rel_diff"] < 1e-6 and r["heads_table_equal"] and r["blocks"] == 6


def test_latency_prediction_times_a_runs_plan_beside_the_dense_model(tmp_path, monkeypatch):
    from prune.cli import main as prune

    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.macs_ratio=0.5"]
    assert prune(["--recipe", "quickstart.yaml", "--out", str(run), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    assert prune(["plan", "--recipe", "quickstart.yaml", "--out", str(run), "--quiet",
                  *sum([["--set", s] for s in sets], [])]) == 0  # the same cut as RUN/plan.json
    out = tmp_path / "pred.csv"
    load("latency_prediction").main(["--model", "digits-vit", "--plans",
                                     f"{run / 'prune' / 'prune.json'},{run / 'plan.json'}", "--repeats", "3",
                                     "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and float(rows[0]["dense_ms"]) > 0 and float(rows[0]["pruned_ms"]) > 0
    assert rows[0]["macs_kept"] == rows[1]["macs_kept"] and rows[0]["predicted_speedup"] == rows[1]["predicted_speedup"]
    r = rows[0]  # the columns agree with each other: speed-up and the anchored error from the same two clocks
    assert float(r["speedup"]) == pytest.approx(float(r["dense_ms"]) / float(r["pruned_ms"]), rel=1e-2)
    assert float(r["prediction_error"]) == pytest.approx(float(r["speedup"]) / float(r["predicted_speedup"]) - 1,
                                                         abs=2e-2)
    with pytest.raises(SystemExit, match="not a file"):
        load("latency_prediction").main(["--model", "digits-vit", "--plans", str(tmp_path / "nope.json"),
                                         "--csv", str(out)])


def test_refit_token_weights_refits_one_cut_per_setting(tmp_path):
    from prune.cli import main as prune

    run = tmp_path / "run"
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.macs_ratio=0.5"]
    assert prune(["--recipe", "quickstart.yaml", "--out", str(run), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    out = tmp_path / "w.csv"
    load("refit_token_weights").main(["--model", "digits-vit", "--cut", str(run / "prune"), "--data", "digits",
                                      "--eval-images", "100", "--images", "64", "--settings", "1:0,16:0,16:1",
                                      "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [(r["prefix_weight"], r["last_prefix_only"]) for r in rows] == [("1.0", "False"), ("16.0", "False"),
                                                                           ("16.0", "True")]
    assert len({r["cut_top1"] for r in rows}) == 1 and all(0 < float(r["refitted_top1"]) <= 1 for r in rows)


def test_train_cifar_vit_anneals_a_snapshot_from_the_learning_rate_it_had(tmp_path):
    """`--cool-from` a model: its weights, the learning rate its schedule had at that epoch, decayed to 0; the
    annealed model loads like the others."""
    from test_pipeline import _local_dataset

    from prune.models import load_model

    data = _local_dataset(tmp_path / "data", {"train": list(range(10)) * 4, "test": list(range(10))}, 32)
    train = load("train_cifar_vit")
    small = ["--data", str(data), "--recipe", "basic", "--depth", "1", "--width", "32", "--heads", "2"]
    src = tmp_path / "model"
    train.main([*small, "--out", str(src), "--epochs", "3"])
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["epochs_done"] == 3 and [r["epoch"] for r in cfg["log"]] == [1, 2, 3]
    cfg["log"][-1]["lr"] = 4e-4  # as a snapshot taken mid-schedule says
    (src / "config.json").write_text(json.dumps(cfg))
    cooled = tmp_path / "cooled"
    train.main([*small, "--out", str(cooled), "--epochs", "1", "--cool-from", str(src)])
    c = json.loads((cooled / "config.json").read_text())
    assert c["cooled"]["from_epoch"] == 3 and c["lr"] == cfg["log"][-1]["lr"] > 0 and c["log"][-1]["lr"] == 0
    model, _, _ = load_model(str(cooled))
    assert model.blocks[0].mlp.fc1.out_features == 128
    with pytest.raises(SystemExit, match="needs --epochs"):
        train.main([*small, "--out", str(tmp_path / "x"), "--cool-from", str(src)])


def test_train_cifar_vit_resumes_under_bf16_and_reports_float32_accuracy(tmp_path, monkeypatch):
    """A run resumed with `--precision bf16` continues from its checkpoint and trains under bf16, every log row
    says which precision trained it, and the test top-1 is measured in float32 (no bf16 inside evaluation)."""
    import torch
    from test_pipeline import _local_dataset

    import prune.finetune

    seen = {"train": [], "evaluate": []}

    def watched(name, f):
        def run(model, *a, **k):  # the dtype of the first block's fc1 output in every forward of the call
            h = model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen[name].append(o.dtype))
            try:
                return f(model, *a, **k)
            finally:
                h.remove()
        return run

    monkeypatch.setattr(prune.finetune, "train", watched("train", prune.finetune.train))
    monkeypatch.setattr(prune.finetune, "evaluate", watched("evaluate", prune.finetune.evaluate))
    data = _local_dataset(tmp_path / "data", {"train": list(range(10)) * 4, "test": list(range(10)) * 3}, 32)
    train = load("train_cifar_vit")
    small = ["--data", str(data), "--recipe", "basic", "--depth", "1", "--width", "32", "--heads", "2"]
    out = tmp_path / "model"
    train.main([*small, "--out", str(out), "--epochs", "1"])
    assert set(seen["train"]) == {torch.float32}
    seen["train"].clear()
    train.main([*small, "--out", str(out), "--epochs", "2", "--precision", "bf16"])
    assert set(seen["train"]) == {torch.bfloat16}  # one epoch, resumed from the float32 one's checkpoint
    assert seen["evaluate"] and set(seen["evaluate"]) == {torch.float32}
    cfg = json.loads((out / "config.json").read_text())
    assert [(r["epoch"], r["precision"]) for r in cfg["log"]] == [(1, "fp32"), (2, "bf16")]
    assert "--precision bf16" in cfg["command"]


def test_device_check_smoke_runs_every_step(tmp_path):
    """The prepared GPU script, on the CPU with a tiny model: every step runs and reports (none records an error)."""
    load("device_check").main(["--smoke", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert set(report) == {"smoke", "env", "discovery", "train_step", "recipe"}
    assert not [s for s, r in report.items() if isinstance(r, dict) and "error" in r], report
    assert report["discovery"]["bf16_agrees_with_fp32"] > 0 and report["train_step"]["fp32"]["step_s"] > 0
    assert report["recipe"]["finetune_precision"] == "bf16" and "finetune" in report["recipe"]["stage_seconds"]
    assert (tmp_path / "recipe_summary.json").is_file()
