"""Class specialisation (`prune.classes`, `prune specialize`) on the embedded digits model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_vit
from prune.classes import resolve_classes, restrict_head
from prune.cli import main
from prune.errors import ConfigError
from prune.export import read_metadata
from prune.paths import PathStats, locate_paths
from prune.checkpoint import load_pruned

NAMES = ["airplane", "automobile", "bird", "cat"]


def test_resolve_classes_accepts_indices_and_names_in_the_given_order():
    assert resolve_classes([3, "bird", "0"], 4, NAMES) == [3, 2, 0]
    assert resolve_classes(["1"], 4, None) == [1]


@pytest.mark.parametrize("spec, msg", [
    ([], "is empty"), ([4], "outside the model's 4 classes"), ([1, "automobile"], "listed twice"),
    (["dog"], "unknown class name 'dog'"), ([0, 1, 2, 3], "every class"), ([True], "not a class index"),
])
def test_resolve_classes_rejects_bad_lists(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_classes(spec, 4, NAMES)


def test_restricted_head_gives_the_dense_logits_of_those_classes():
    model = tiny_vit()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        dense = model(x)
        restrict_head(model, [4, 1])
        torch.testing.assert_close(model(x), dense[:, [4, 1]], rtol=0, atol=1e-6)
        assert model.num_classes == 2


def test_selected_stats_equal_stats_of_only_those_classes_images():
    model = tiny_vit()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 1, 3, 0])
    res = locate_paths(model, x, y, steps=2, top_k=3, progress=False)
    full = PathStats.empty(5, 4, 64, res.settings).update(res)
    keep = torch.isin(y, torch.tensor([3, 1]))
    only = locate_paths(model, x[keep], y[keep], steps=2, top_k=3, progress=False)  # same targets
    only.labels = torch.tensor([{3: 0, 1: 1}[int(v)] for v in y[keep]])  # grouped under the new ids
    ref = PathStats.empty(2, 4, 64, only.settings).update(only)
    sel = full.select([3, 1])
    for k in ("counts", "freq", "score_sum", "score_norm_sum", "jas_sum"):
        torch.testing.assert_close(getattr(sel, k), getattr(ref, k), rtol=1e-5, atol=1e-6)


SMALL = ["paths.images_per_class=3", "paths.steps=2", "importance.calibration_images=48", "finetune.epochs=0",
         "bench.enabled=false", "importance.kind=path_frequency", "prune.scope=uniform",
         "prune.units=[ffn]", "prune.macs_ratio=null"]  # a share of each block's FFN neurons


def run(tmp_path, out, *extra):
    return main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / out), "--quiet",
                 *sum([["--set", s] for s in SMALL + list(extra)], [])])


def test_specialised_run_end_to_end(tmp_path):
    assert run(tmp_path, "s", "prune.classes=[3,8]") == 0
    root = tmp_path / "s"
    structure = json.loads((root / "prune/structure.json").read_text())
    assert structure["classes"] == [3, 8]
    model, _ = load_pruned(root / "prune")
    assert model.head.out_features == 2
    assert json.loads(read_metadata(root / "export/pruned.onnx")["prune.classes"]) == [3, 8]
    summary = json.loads((root / "summary.json").read_text())
    from prune.digits import digits_dataset

    test_labels = digits_dataset()["test"]["label"]
    assert summary["accuracy"]["dense"]["images"] == sum(v in (3, 8) for v in test_labels)
    assert summary["classes"] == [3, 8]
    # the dense column is the dense model restricted to those classes' logits, on those classes' images
    from prune.models import load_model
    from prune.data import ImageDataset, make_transform

    dense, cfg, _ = load_model("digits-vit")
    ds = digits_dataset()["test"]
    rows = [i for i, v in enumerate(test_labels) if v in (3, 8)]
    data = ImageDataset(ds, make_transform(cfg), "img", "label", "test", rows)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([{3: 0, 8: 1}[data[i][1]] for i in range(len(data))])
    with torch.no_grad():
        acc = (dense(x)[:, [3, 8]].argmax(-1) == y).float().mean().item()
    assert summary["accuracy"]["dense"]["top1"] == pytest.approx(acc)


def test_specialize_reuses_the_runs_paths_and_matches_a_run_from_scratch(tmp_path, capsys):
    assert run(tmp_path, "full", "export.enabled=false") == 0
    capsys.readouterr()
    assert main(["specialize", str(tmp_path / "full"), "--classes", "5,2", "--quiet", "--set", "prune.ratio=0.8",
                 "--out", str(tmp_path / "sp")]) == 0
    out = capsys.readouterr().out
    assert "[paths] unchanged" in out and "specialised to classes [5, 2]" in out
    assert run(tmp_path, "scratch", "export.enabled=false", "prune.ratio=0.8", "prune.classes=[5,2]") == 0
    a, b = load_file(tmp_path / "sp/prune/model.safetensors"), load_file(tmp_path / "scratch/prune/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_specialize_readme_example_reaches_its_ratio(tmp_path, capsys):
    """`prune specialize RUN --classes 1,7 --set prune.ratio=0.9` on a ratio recipe: the default cap 0.9 cannot
    reach 0.9 once every block keeps its rounded-up share, so specialize gives the cap room and says so."""
    assert run(tmp_path, "full", "export.enabled=false", "prune.scope=global", "prune.max_layer_ratio=0.9") == 0
    capsys.readouterr()
    assert main(["specialize", str(tmp_path / "full"), "--classes", "1,7", "--quiet", "--set", "prune.ratio=0.9"]) == 0
    out = capsys.readouterr().out
    assert "prune.max_layer_ratio 0.95" in out
    summary = json.loads((tmp_path / "full-classes-1-7" / "summary.json").read_text())
    assert summary["prune"]["ratio"] == 0.9 and summary["classes"] == [1, 7]
    assert sum(summary["ffn_widths"]["pruned"]) == round(0.1 * sum(summary["ffn_widths"]["dense"]))
    # a cap the user sets is kept, and an unreachable one fails before any work with the cap that would do
    assert main(["specialize", str(tmp_path / "full"), "--classes", "1,7", "--quiet", "--set", "prune.ratio=0.9",
                 "--set", "prune.max_layer_ratio=0.9", "--out", str(tmp_path / "capped")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "raise prune.max_layer_ratio to 0.9" in err[0]
    assert not (tmp_path / "capped").exists()


@pytest.mark.parametrize("classes, msg", [("[]", "is empty"), ("[10]", "outside the model's 10 classes"),
                                          ("[3,3]", "listed twice"), ("[cat]", "unknown class name 'cat'")])
def test_bad_classes_fail_before_any_work(tmp_path, capsys, classes, msg):
    assert run(tmp_path, "bad", f"prune.classes={classes}") == 2
    err = capsys.readouterr().err
    assert err.startswith("prune: error: recipe key prune.classes") and msg in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_specialize_needs_a_run_directory(tmp_path, capsys):
    assert main(["specialize", str(tmp_path), "--classes", "1"]) == 2
    assert "not a prune run directory" in capsys.readouterr().err
