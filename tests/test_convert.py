"""`prune convert`: a timm model and a safetensors checkpoint -> the model directory recipes take, and a run on it
with a local parquet dataset (README "Your own model and data")."""

import json

import timm
import torch
from safetensors.torch import save_file

from prune.cli import main
from prune.models import load_model

KW = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def test_convert_a_checkpoint_and_prune_it_on_local_parquet(tmp_path, capsys):
    from test_pipeline import _local_dataset

    torch.manual_seed(0)
    mine = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KW).eval()
    save_file(mine.state_dict(), str(tmp_path / "weights.safetensors"))
    assert main(["convert", "vit_tiny_patch16_224", "--kwargs", json.dumps(KW), "--checkpoint",
                 str(tmp_path / "weights.safetensors"), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
                 "--out", str(tmp_path / "models/mine")]) == 0
    cfg = json.loads((tmp_path / "models/mine/config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["model_kwargs"] == KW and cfg["mean"] == [0.5] * 3
    model, data_cfg, _ = load_model(str(tmp_path / "models/mine"))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), mine(x))
    assert data_cfg.input_size == (3, 8, 8) and data_cfg.mean == (0.5, 0.5, 0.5)
    data = _local_dataset(tmp_path / "data", {"train": list(range(10)) * 3, "test": list(range(10))}, 8)
    sets = [f"model.name={tmp_path / 'models/mine'}", f"data.source={data}", "importance.calibration_images=30",
            "finetune.epochs=0", "bench.enabled=false", "prune.units=[ffn,heads]", "prune.macs_ratio=0.3",
            "prune.max_layer_ratio=1.0"]
    assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet",
                 *sum([["--set", s] for s in sets], [])]) == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "run/summary.json").read_text())
    assert s["model"] == str(tmp_path / "models/mine") and s["accuracy"]["dense"]["images"] == 10


def test_convert_refuses_what_it_cannot_trust_before_writing(tmp_path, capsys):
    torch.save({"a": torch.zeros(1)}, tmp_path / "w.pth")
    cases = [
        (["vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "w.pth")], "never unpickles"),
        (["vit_tiny_patch16_224", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["resnet18"], "not a timm VisionTransformer"),
        (["vit_nope_nope"], "unknown model 'vit_nope_nope'"),
        (["vit_tiny_patch16_224", "--pretrained", "--checkpoint", str(tmp_path / "w.pth")], "not both"),
    ]
    for args, msg in cases:
        code = main(["convert", *args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and msg in err[0], (args, err)
        assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    assert main(["convert", "vit_tiny_patch16_224", "--out", str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err
