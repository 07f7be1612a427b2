"""`prune --recipe` end to end: outputs, resume, overwrite protection, validation, bad data, ViT-B/16 mechanics."""

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from prune.cli import main
from prune.checkpoint import load_pruned

SMALL = ["paths.images_per_class=3", "paths.steps=3", "importance.calibration_images=64", "data.eval_images=120",
         "finetune.epochs=0", "export.enabled=false", "bench.enabled=false",
         "importance.kind=path_frequency", "prune.scope=uniform",  # the paths stage and uniform widths these tests check
         "prune.units=[ffn]", "prune.macs_ratio=null"]  # half of each block's FFN neurons, not the quickstart's MACs


def run(tmp_path, *extra, out="run"):
    return main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / out), "--quiet",
                 *sum([["--set", s] for s in SMALL], []), *extra])


def test_quickstart_writes_every_stage_and_a_consistent_summary(tmp_path, capsys):
    assert run(tmp_path) == 0
    root = tmp_path / "run"
    for f in ("recipe.yaml", "summary.json", "baseline/metrics.json", "paths/stats.safetensors", "importance/importance.safetensors",
              "prune/model.safetensors", "prune/structure.json", "evaluate/metrics.json"):
        assert (root / f).is_file(), f
    summary = json.loads((root / "summary.json").read_text())
    metrics = {**json.loads((root / "baseline/metrics.json").read_text()),
               **json.loads((root / "evaluate/metrics.json").read_text())}
    for k in ("dense", "pruned"):
        assert {a: metrics[k][a] for a in ("top1", "top5", "images")} == summary["accuracy"][k]
    assert summary["ffn_widths"]["pruned"] == [128] * 6
    assert summary["params"]["pruned"] < summary["params"]["dense"]
    assert summary["macs"]["pruned"] < summary["macs"]["dense"]
    assert metrics["dense"]["images"] == 120 and metrics["dense"]["top1"] > 0.9  # the shipped digits model
    model, structure = load_pruned(root / "prune")
    assert [b.mlp.fc1.out_features for b in model.blocks] == [128] * 6
    # no temp dirs left; only the run's lock file, released (its holder note removed)
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".lock"]
    assert "top-1" in capsys.readouterr().out


def test_shipped_default_scores_attribution_and_sets_block_widths_without_discovery(tmp_path):
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false"]
    assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "d"), "--quiet",
                 *sum([["--set", s] for s in sets], [])]) == 0
    root = tmp_path / "d"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["importance"] == "activation_taylor" and summary["prune"]["scope"] == "global"
    assert summary["prune"]["units"] == ["ffn", "heads"] and summary["prune"]["macs_ratio"] == 0.6
    assert not (root / "paths").exists()  # activation_taylor needs no path discovery
    assert 0.36 <= summary["macs"]["pruned"] / summary["macs"]["dense"] <= 0.40  # 60% removed, a head or so over
    for kind, dense in (("ffn", 256), ("heads", 4)):  # the scores, not a rule, set each block's width of each kind
        widths = summary["widths"][kind]["pruned"]
        assert len(set(widths)) > 1 and max(widths) <= dense, (kind, widths)
    assert summary["accuracy"]["pruned"]["top1"] > 0.9


def test_rerun_reuses_and_update_reruns_only_downstream(tmp_path, capsys):
    assert run(tmp_path) == 0
    capsys.readouterr()
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    assert all(f"[{s}] unchanged" in out for s in ("baseline", "paths", "importance", "prune", "evaluate"))
    # a changed recipe is refused without --update, and nothing changes
    before = (tmp_path / "run/recipe.yaml").read_text()
    assert run(tmp_path, "--set", "prune.ratio=0.25") == 2
    assert "prune.ratio: 0.5 -> 0.25" in capsys.readouterr().err
    assert (tmp_path / "run/recipe.yaml").read_text() == before
    assert run(tmp_path, "--set", "prune.ratio=0.25", "--update") == 0
    out = capsys.readouterr().out
    assert "[paths] unchanged" in out and "[importance] unchanged" in out and "[baseline] unchanged" in out
    assert "[prune] running" in out and "[evaluate] running" in out
    assert json.loads((tmp_path / "run/summary.json").read_text())["ffn_widths"]["pruned"] == [192] * 6
    assert run(tmp_path, "--set", "prune.ratio=0.25", "--force", "paths") == 0
    out = capsys.readouterr().out
    assert "[paths] running" in out and "[importance] running" in out and "[evaluate] running" in out
    assert "[baseline] unchanged" in out  # the dense accuracy does not read the paths


def test_interrupted_run_resumes(tmp_path, monkeypatch, capsys):
    import prune.stages.prune as prune_stage

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_stage, "prune_units", boom)
    assert run(tmp_path) == 130
    root = tmp_path / "run"
    assert (root / "paths/stage.json").is_file() and (root / "importance/stage.json").is_file()
    assert not (root / "prune").exists() and [p.name for p in root.iterdir() if p.name.startswith(".")] == [".lock"]
    monkeypatch.undo()
    capsys.readouterr()
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "[paths] unchanged" in out and "[importance] unchanged" in out and "[prune] running" in out


@pytest.mark.parametrize("sets,needle", [
    (["prune.ratio=1.5"], "recipe key prune.ratio: must be in (0, 1), or a list of such values (a sweep), not 1.5"),
    (["prune.ratio=0"], "recipe key prune.ratio: must be in (0, 1)"),
    (["prune.ratoi=0.5"], "recipe key prune.ratoi: unknown key"),
    (["paths.steps=two"], "recipe key paths.steps: Input should be a valid integer"),
    (["importance.kind=vibes"], "recipe key importance.kind: unknown kind 'vibes'"),
    (["data.source=./missing_dir"], "recipe key data.source: dataset path ./missing_dir does not exist"),
    (["model.name=resnet18"], "recipe key model.name: "),
    (["model.name=no_such_vit_xyz"], "recipe key model.name: unknown model"),
    (["model.name=vit_tiny_patch16_224", "model.pretrained=false", "model.kwargs.global_pool=avg", "paths.scope=cls"],
     "recipe key paths: scope='cls' needs a model that reads out its CLS token"),
    (["noequals"], "write it as key.sub=value"),
    (["prune.macs_ratio=null", "prune.max_layer_ratio=0.3"], "global pruning could not reach the ratio"),
    (["prune.max_layer_ratio=0.3"], "prune.macs_ratio 0.6 is unreachable"),
    (["finetune.distill.alpah=0.5"], "recipe key finetune.distill.alpah: unknown key; valid keys here are alpha"),
    (["bench.batch_sizes=[0]"], "recipe key bench.batch_sizes: give one or more positive batch sizes"),
])
def test_recipe_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, sets, needle):
    out = tmp_path / "run"
    code = main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("prune: error:") and needle in err[0], err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["--recipe", "quickstart.yaml", "--out", str(f), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err


def _png(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _local_dataset(root, splits, size, broken_row=None):
    """Local HF parquet shards of random images, one file per split."""
    g = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, labels in splits.items():
        imgs = [{"bytes": b"broken" if (split, i) == broken_row else _png(g.integers(0, 255, (size, size, 3), dtype=np.uint8)),
                 "path": None} for i in range(len(labels))]
        datasets.Dataset.from_dict({"img": imgs, "label": labels}, features=feats).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet"))
    return root


def test_bad_eval_row_stops_cleanly_or_is_skipped(tmp_path, capsys):
    data = _local_dataset(tmp_path / "data", {"train": list(range(10)) * 3, "test": list(range(10))}, 8,
                          broken_row=("test", 4))
    capsys.readouterr()
    args = ["--set", f"data.source={data}", "--set", "data.eval_images=null"]
    assert run(tmp_path, *args) == 2  # a broken input (prune.errors.BadInputError)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'test' row 4: image does not decode" in err[0] and "skip_bad" in err[0]
    root = tmp_path / "run"
    assert (root / "prune/stage.json").is_file() and not (root / "baseline").exists()  # stages so far kept
    assert run(tmp_path, *args, "--set", "data.skip_bad=true", "--update") == 0
    summary = json.loads((root / "summary.json").read_text())
    assert summary["skipped_rows"]["eval"] == [4] and summary["accuracy"]["dense"]["images"] == 9


def test_vit_b16_recipe_mechanics_at_full_size(tmp_path, capsys):
    """The shipped ImageNet recipe, random weights, a handful of local 224px images: 12 blocks of 12 heads and
    3072 neurons -> half the MACs, heads as per-block counts, FFN widths in blocks of 64; exported and benchmarked."""
    data = _local_dataset(tmp_path / "data", {"train": [0, 1, 2, 3], "validation": [0, 1]}, 224)
    sets = [f"data.source={data}", "data.image_column=img", "model.pretrained=false", "data.skip_bad=true",
            "data.num_workers=0", "data.batch_size=4", "paths.images_per_class=1", "paths.steps=2",
            "paths.top_k=2", "paths.batch_size=4", "importance.calibration_images=4"]
    sets += ["finetune.epochs=0", "bench.batch_sizes=[1]", "bench.repeats=1", "bench.warmup=0", "bench.pytorch=false"]
    code = main(["--recipe", "vit_b16_50pct.yaml", "--out", str(tmp_path / "run"), "--quiet",
                 *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["importance"] == "activation_taylor" and "paths" not in summary  # no discovery needed
    assert summary["prune"]["units"] == ["ffn", "heads"] and summary["prune"]["macs_ratio"] == 0.5
    widths, heads = summary["widths"]["ffn"], summary["widths"]["heads"]
    assert widths["dense"] == [3072] * 12 and heads["dense"] == [12] * 12
    assert all(w % 64 == 0 and 0 <= w <= 3072 for w in widths["pruned"])  # rounded up to multiples of 64
    assert heads["pruned"] != [12] * 12 and all(0 <= h <= 12 for h in heads["pruned"])
    # half the MACs, less at most what rounding the FFN widths up to 64 gives back (one 64-block per block)
    removed = 1 - summary["macs"]["pruned"] / summary["macs"]["dense"]
    assert 0.5 - 12 * 64 * 197 * 2 * 768 / summary["macs"]["dense"] <= removed
    model, structure = load_pruned(tmp_path / "run/prune")
    assert [b.attn.num_heads if hasattr(b.attn, "num_heads") else 0 for b in model.blocks] == heads["pruned"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    parity = summary["onnx"]["pruned"]["parity"]
    assert all(v["max_abs_diff"] <= v["tolerance"] for k, v in parity.items() if k.startswith("batch_"))
    assert set(summary["latency"]["onnxruntime"]) == {"dense", "pruned"}
