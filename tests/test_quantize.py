"""int8 ONNX beside fp32: export from a run and from `prune export`, judged by accuracy; bench and report list it."""

import json

import numpy as np
import pytest

from prune.cli import main
from prune.export import ort_session

SETS = ["importance.calibration_images=64", "data.eval_images=200", "finetune.epochs=0",
        "export.quantize=[dynamic,static]", "export.calibration_images=64", "bench.repeats=2", "bench.batch_sizes=[1,4]",
        "bench.pytorch=false"]


def run(tmp_path, *extra, out="run"):
    return main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / out), "--quiet",
                 *sum([["--set", s] for s in SETS + list(extra)], [])])


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    assert run(tmp) == 0
    return tmp / "run"


def test_both_modes_export_run_and_agree_with_fp32(quantized_run):
    root = quantized_run
    info = json.loads((root / "export/export.json").read_text())
    assert set(info) == {"dense", "pruned", "dense.int8-dynamic", "dense.int8-static", "pruned.int8-dynamic",
                         "pruned.int8-static"}
    for name in ("dense", "pruned"):
        for mode in ("dynamic", "static"):
            q = info[f"{name}.int8-{mode}"]
            j = q["int8"]
            assert q["of"] == name and j["images"] == 200 and j["agreement"] >= 0.95, (name, mode, j)
            assert j["fp32_top1"] == pytest.approx(json.loads((root / "summary.json").read_text())
                                                   ["accuracy"][name]["top1"], abs=1 / 200 + 1e-9)
            path = root / "export" / f"{name}.int8-{mode}.onnx"
            assert path.stat().st_size < (root / "export" / f"{name}.onnx").stat().st_size / 2  # int8 weights
            sess = ort_session(path, providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: np.random.rand(3, 3, 8, 8).astype(np.float32)})[0]
            assert out.shape == (3, 10)
    # static QDQ keeps LayerNorm, GELU and Softmax in float: no quantised versions of them in the graph
    import onnx

    ops = {n.op_type for n in onnx.load(str(root / "export/pruned.int8-static.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "LayerNormalization" in ops


def test_artifacts_list_drives_bench_and_report(quantized_run):
    s = json.loads((quantized_run / "summary.json").read_text())
    ort = s["latency"]["onnxruntime"]
    assert set(ort) == {"dense", "pruned", "dense.int8-dynamic", "dense.int8-static", "pruned.int8-dynamic",
                        "pruned.int8-static"} and all(set(v) == {"1", "4"} for v in ort.values())
    report = (quantized_run / "report/report.md").read_text()
    for name in ort:
        assert f"| {name} |" in report
    assert "top-1 agreement" in report
    # no int8 file breaks the threshold; a busy machine may add a latency-noise warning, which is not this test's
    warned = [line for line in report.splitlines() if "Warning" in line]
    assert all("latency is noisy" in line for line in warned), warned
    assert set(s["measured_on"]["onnx"]) == set(ort)


def test_a_threshold_breach_is_reported_and_fails_only_when_asked(tmp_path, capsys, monkeypatch):
    from prune import quantize

    real = quantize.judge  # the export stage judges through quantize.quantize_and_judge

    def worse(*a, **k):  # the int8 model as if it lost 30 points
        j = real(*a, **k)
        j.update(top1=j["fp32_top1"] - 0.3, drop=0.3, within_threshold=False)
        return j

    monkeypatch.setattr(quantize, "judge", worse)
    assert run(tmp_path, "export.quantize=[dynamic]", "bench.enabled=false") == 0
    out = capsys.readouterr()
    assert "warning: pruned.int8-dynamic.onnx loses 30.00 points" in out.out
    assert "not recommended for deployment" in (tmp_path / "run/report/report.md").read_text()
    assert run(tmp_path, "export.quantize=[dynamic]", "bench.enabled=false", "export.fail_on_int8_drop=true",
               out="strict") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune: error: ") and "fail_on_int8_drop" in err[0]
    assert (tmp_path / "strict/export/pruned.int8-dynamic.onnx").is_file()  # written, reported, not hidden


def test_prune_export_quantizes_a_model_directory_and_bench_reads_int8(quantized_run, tmp_path, capsys):
    assert main(["export", str(quantized_run / "prune"), "--out", str(tmp_path / "m.onnx"), "--quantize",
                 "dynamic,static", "--data", "digits", "--images", "100"]) == 0
    out = capsys.readouterr().out
    assert "m.int8-dynamic.onnx" in out and "m.int8-static.onnx" in out and "agreement" in out
    assert main(["bench", str(tmp_path / "m.int8-static.onnx"), "--repeats", "2", "--batch-sizes", "1"]) == 0
    assert "m.int8-static.onnx onnxruntime" in capsys.readouterr().out
    assert main(["export", str(quantized_run / "prune"), "--out", str(tmp_path / "n.onnx"), "--quantize", "static"]) == 2
    assert "give --data" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()
    assert main(["export", str(quantized_run / "prune"), "--out", str(tmp_path / "n.onnx"), "--quantize", "int4"]) == 2
