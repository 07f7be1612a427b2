"""`prune bench --csv/--json`: one row per model, runtime and batch size, with timm benchmark.py's column
names where they mean the same, percentiles of the same runs, and what the figures depend on."""

import csv
import json

import onnxruntime
import timm
import torch
from conftest import tiny_vit

from prune.bench import ROW_COLUMNS, measure, torch_runner
from prune.recipe import PruneCfg
from prune.cli import main
from prune.models import ModelSpec
from prune.checkpoint import save_pruned
from prune.budget import count_params_macs
from prune.pruning import prune_units
from prune.units import FFN

TIMM_COLUMNS = ["model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
                "param_count", "infer_gmacs"]


def test_measure_keeps_p99_and_the_mean_beside_median_and_p90():
    r = measure({"m": torch_runner(tiny_vit())}, (3, 16, 16), (1,), warmup=0, repeats=7)["m"]["1"]
    assert r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["mean_ms"] > 0 and r["repeats"] == 7
    assert r["images_per_s"] == 1e3 / r["median_ms"]  # unchanged: from the median


def test_bench_writes_timm_named_rows_as_csv_and_json(tmp_path, capsys):
    model = tiny_vit()
    widths = FFN.widths(model)
    x = torch.zeros(1, 3, 16, 16)
    kept = prune_units(model, FFN, torch.rand(4, 64), PruneCfg(ratio=0.5, scope="uniform"), x, keep=[32] * 4)
    d = tmp_path / "m"
    save_pruned(model, d, ModelSpec("vit_tiny_patch16_224", dict(img_size=16, patch_size=4, embed_dim=32, depth=4,
                num_heads=2, mlp_ratio=2.0, num_classes=5)), {"ffn": kept}, {"ffn": widths})
    params, macs = count_params_macs(model, x)
    out_csv, out_json = tmp_path / "b.csv", tmp_path / "b.json"
    assert main(["bench", str(d), "--onnx", "--batch-sizes", "1,2", "--repeats", "3", "--warmup", "0",
                 "--csv", str(out_csv), "--json", str(out_json)]) == 0
    with open(out_csv, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(ROW_COLUMNS) and set(TIMM_COLUMNS) <= set(reader.fieldnames)
        rows = list(reader)
    data = json.loads(out_json.read_text())
    assert set(data) >= {"rows", "latency", "noise", "models"}  # the JSON file keeps its earlier keys
    assert len(rows) == len(data["rows"]) == 4
    assert {(r["model"], r["runtime"], r["infer_batch_size"]) for r in rows} == \
        {("m", rt, b) for rt in ("pytorch", "onnxruntime") for b in ("1", "2")}
    for row, jrow in zip(rows, data["rows"]):
        lat = data["latency"][f"m {row['runtime']}"][row["infer_batch_size"]]
        b = int(row["infer_batch_size"])
        assert jrow["p50_ms"] == round(lat["median_ms"], 3) and jrow["p99_ms"] == round(lat["p99_ms"], 3)
        assert jrow["infer_step_time"] == round(lat["mean_ms"], 3)  # timm's step time: the mean, in ms
        assert jrow["infer_samples_per_sec"] == round(b * 1e3 / lat["mean_ms"], 2)
        assert jrow["param_count"] == round(params / 1e6, 4) and jrow["infer_gmacs"] == round(macs / 1e9, 6)
        assert jrow["infer_img_size"] == 16 and jrow["repeats"] == 3
        assert jrow["torch"] == torch.__version__ and jrow["onnxruntime"] == onnxruntime.__version__
        assert jrow["timm"] == timm.__version__ and jrow["cpu"] and jrow["device"] == "cpu"
        assert jrow["threads"] == (torch.get_num_threads() if row["runtime"] == "pytorch" else None)
        assert row["p50_ms"] == str(jrow["p50_ms"]) and row["threads"] == ("" if jrow["threads"] is None else str(jrow["threads"]))


def test_an_onnx_file_alone_has_no_parameter_count(tmp_path):
    from prune.export import export_onnx

    path = tmp_path / "t.onnx"
    export_onnx(tiny_vit(), torch.zeros(1, 3, 16, 16), path)
    assert main(["bench", str(path), "--batch-sizes", "1", "--repeats", "2", "--warmup", "0",
                 "--csv", str(tmp_path / "o.csv")]) == 0
    with open(tmp_path / "o.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "t.onnx" and row["runtime"] == "onnxruntime"
    assert row["param_count"] == "" and row["infer_gmacs"] == "" and float(row["p50_ms"]) > 0
