"""ONNX parity, fine-tune resume inside the pipeline, the report against metrics.json, `prune bench`."""

import json
import re

import pytest
import torch

from conftest import trained_tiny_vit
from prune.cli import main
from prune.export import ParityError, check_parity, export_onnx
from prune.recipe import PruneCfg
from prune.pruning import prune_ffn

FULL = ["paths.images_per_class=2", "paths.steps=2", "importance.calibration_images=64", "data.eval_images=100",
        "finetune.epochs=2", "finetune.train_images=128", "bench.batch_sizes=[1,4]", "bench.repeats=2",
        "bench.warmup=1", "importance.kind=path_frequency"]  # a path criterion: the report draws path heat maps


def test_onnx_matches_pytorch_for_dense_and_pruned(tmp_path):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dense = trained_tiny_vit()
    pruned = trained_tiny_vit()
    prune_ffn(pruned, torch.rand(4, 64, dtype=torch.float64), PruneCfg(ratio=0.5, scope="uniform"), x[:1])
    for name, model in (("dense", dense), ("pruned", pruned)):
        meta = export_onnx(model, x[:1], tmp_path / f"{name}.onnx")
        assert meta["weights_inline"] and meta["opset"] == 18
        parity = check_parity(model, tmp_path / f"{name}.onnx", x, (1, 8), atol=1e-4)
        assert parity["batch_1"]["max_abs_diff"] < 1e-4 and parity["batch_8"]["max_abs_diff"] < 1e-4
    with torch.no_grad():  # the file no longer matches the model: the check must fail loudly
        pruned.head.bias += 1.0
    with pytest.raises(ParityError, match="disagrees with PyTorch at batch 1"):
        check_parity(pruned, tmp_path / "pruned.onnx", x, (1, 8))


def test_full_quickstart_resumes_finetune_and_reports_metrics(tmp_path, monkeypatch, capsys):
    import prune.finetune as ft

    real_save, calls = ft.save_checkpoint, []

    def save_then_die(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(*a, **k)

    monkeypatch.setattr(ft, "save_checkpoint", save_then_die)
    args = ["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet", *sum([["--set", s] for s in FULL], [])]
    assert main(args) == 130
    root = tmp_path / "run"
    assert not (root / "finetune").exists() and list((root / ".checkpoints").glob("finetune-*/last/state.json"))
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[finetune] resuming from" in out and "[prune] unchanged" in out
    history = json.loads((root / "finetune/history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # 0: the one-shot weights on the held-out slice
    rec = json.loads((root / "finetune/metrics.json").read_text())["recovery"]
    best = max(history, key=lambda h: (h["eval_top1"], -h["epoch"]))  # the earliest of the best evaluations
    assert rec["best_epoch"] == best["epoch"] and rec["best"] >= rec["oneshot"]
    assert not (root / ".checkpoints").exists() or not any((root / ".checkpoints").iterdir())

    metrics = json.loads((root / "report/metrics.json").read_text())
    assert metrics == {**json.loads((root / "summary.json").read_text()), "plots": metrics["plots"]}
    assert set(metrics["accuracy"]) == {"dense", "pruned", "finetuned"}
    for name in ("dense", "pruned"):
        for b in ("batch_1", "batch_8"):
            assert metrics["onnx"][name]["parity"][b]["max_abs_diff"] <= metrics["onnx"][name]["parity"][b]["tolerance"]
    assert sorted(metrics["plots"]) == ["accuracy_vs_latency.png", "path_heatmaps.png", "widths.png"]
    assert all((root / "report/plots" / p).stat().st_size > 1000 for p in metrics["plots"])

    # every number in the report's table is the one in metrics.json
    report = (root / "report/report.md").read_text()
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in report.splitlines() if re.match(r"\| (dense|pruned|finetuned) ", line)}
    lat = metrics["latency"]
    for name in ("dense", "pruned", "finetuned"):
        struct = "dense" if name == "dense" else "pruned"
        cells = table[name]
        assert cells[0] == f"{metrics['accuracy'][name]['top1']:.4f}"
        assert cells[1] == f"{metrics['accuracy'][name]['top5']:.4f}"
        assert cells[2] == f"{metrics['params'][struct]:,}" and cells[3] == f"{metrics['macs'][struct]:,}"
        assert cells[4] == f"{lat['onnxruntime'][struct]['1']['median_ms']:.2f}"
    assert "distilled from the dense model" in report

    # prune bench on the run directory: dense vs its fine-tuned model, PyTorch and onnxruntime
    capsys.readouterr()
    assert main(["bench", str(root), "--onnx", "--batch-sizes", "1", "--repeats", "2", "--json",
                 str(tmp_path / "b.json")]) == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    assert set(bench["latency"]) == {"dense pytorch", "dense onnxruntime", "pruned pytorch", "pruned onnxruntime"}
    assert bench["models"]["pruned"]["macs"] == metrics["macs"]["pruned"]


def test_bench_errors(tmp_path, capsys):
    assert main(["bench", "digits-vit", "--batch-sizes", "0"]) == 2
    assert "--batch-sizes must be positive" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
