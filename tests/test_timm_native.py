"""Pruned-model directories are timm-native: `timm.create_model("local-dir:DIR", pretrained=True)` (once
prune is imported) computes what `load_pruned` returns, `resolve_data_config` gives the preprocessing, and
every directory carries a model card generated from its data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import trained_tiny_vit

import prune  # noqa: F401  (registers prune_vit)
from prune.recipe import PruneCfg
from prune.card import ModelCard
from prune.data import make_transform
from prune.models import DataConfig, ModelSpec, load_model
from prune.checkpoint import load_pruned, save_pruned
from prune.pruning import prune_units
from prune.units import FFN, HEADS, is_empty

KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, num_classes=5)
DATA = {"input_size": [3, 16, 16], "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear",
        "crop_pct": 0.875}
NAMES = ["cat", "dog", "owl", "eel", "yak"]
X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def pruned_dir(path: Path, card: ModelCard | None = None) -> Path:
    """A trained tiny ViT with heads and FFN neurons removed, block 1's attention and block 2's FFN emptied."""
    model = trained_tiny_vit()  # built with KW
    dense = {u.kind: u.widths(model) for u in (FFN, HEADS)}
    g = torch.Generator().manual_seed(0)
    settings = PruneCfg(ratio=0.5, scope="uniform")
    kept = {"heads": prune_units(model, HEADS, torch.rand(4, 2, generator=g), settings, X[:1], keep=[1, 0, 2, 1]),
            "ffn": prune_units(model, FFN, torch.rand(4, 64, generator=g), settings, X[:1], keep=[10, 40, 0, 33])}
    save_pruned(model, path, ModelSpec("vit_tiny_patch16_224", KW), kept, dense, DATA, label_names=NAMES, card=card)
    return path


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return pruned_dir(tmp_path_factory.mktemp("pruned") / "model")


def test_timm_local_dir_computes_what_load_pruned_returns(directory):
    ours, structure = load_pruned(directory)
    theirs = timm.create_model(f"local-dir:{directory}", pretrained=True).eval()
    assert type(theirs) is type(ours)
    assert HEADS.widths(theirs) == [1, 0, 2, 1] and FFN.widths(theirs) == [10, 40, 0, 33]
    assert is_empty(theirs.blocks[1].attn) and is_empty(theirs.blocks[2].mlp)
    with torch.no_grad():
        torch.testing.assert_close(theirs(X), ours(X), rtol=0, atol=1e-6)
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["architecture"] == "prune_vit" and cfg["model_args"]["base_architecture"] == "vit_tiny_patch16_224"
    assert cfg["model_args"]["block_heads"] == [1, 0, 2, 1] and cfg["model_args"]["block_mlp"] == [10, 40, 0, 33]
    assert (directory / "structure.json").is_file() and structure["units"]["heads"]["widths"] == [1, 0, 2, 1]


def test_resolve_data_config_gives_the_preprocessing_and_class_names(directory):
    from PIL import Image

    model = timm.create_model(f"local-dir:{directory}", pretrained=True)
    cfg = timm.data.resolve_data_config(model=model)
    assert tuple(cfg["input_size"]) == (3, 16, 16) and tuple(cfg["mean"]) == (0.4, 0.45, 0.5)
    assert tuple(cfg["std"]) == (0.2, 0.25, 0.3) and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 0.875
    assert model.pretrained_cfg["label_names"] == NAMES and model.num_classes == 5
    img = Image.fromarray((torch.rand(40, 30, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy())
    ours = make_transform(DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in DATA.items()}))
    torch.testing.assert_close(timm.data.create_transform(**cfg)(img), ours(img), rtol=0, atol=0)


def test_import_prune_registers_prune_vit_when_timm_is_imported_later(directory):
    """In a fresh interpreter: `import prune` does not import timm, and `import prune, timm` is all a user needs."""
    with torch.no_grad():
        expected = load_pruned(directory)[0](X[:2]).sum().item()
    torch.save(X[:2], directory.parent / "x.pt")
    code = ("import sys, prune; assert 'timm' not in sys.modules\n"
            "import timm, torch\n"
            f"m = timm.create_model('local-dir:{directory}', pretrained=True).eval()\n"
            f"x = torch.load('{directory.parent / 'x.pt'}')\n"
            "with torch.no_grad(): print(repr(m(x).sum().item()))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.strip()) - expected) < 1e-5


def test_directories_without_config_json_still_load(tmp_path, directory):
    """Directories written before config.json existed (structure.json + weights) load as before."""
    import shutil

    old = tmp_path / "old"
    old.mkdir()
    for f in ("structure.json", "model.safetensors"):
        shutil.copy(directory / f, old / f)
    model, _ = load_pruned(old)
    with torch.no_grad():
        torch.testing.assert_close(model(X), load_pruned(directory)[0](X), rtol=0, atol=0)


def test_a_pruned_directory_is_a_model_directory_and_prunes_again(tmp_path, directory):
    """`load_model` reads timm's config.json; a model pruned again keeps its earlier cuts in config.json."""
    model, data_cfg, spec = load_model(str(directory))
    assert spec.architecture == "prune_vit" and data_cfg.mean == (0.4, 0.45, 0.5) and data_cfg.crop_pct == 0.875
    with torch.no_grad():
        torch.testing.assert_close(model(X), load_pruned(directory)[0](X), rtol=0, atol=0)
    widths = FFN.widths(model)
    kept = prune_units(model, FFN, torch.rand(4, 64), PruneCfg(ratio=0.5, scope="uniform"), X[:1], keep=[5, 20, 0, 16])
    save_pruned(model, tmp_path / "again", spec, {"ffn": kept}, {"ffn": widths}, data_cfg.as_dict())
    args = json.loads((tmp_path / "again/config.json").read_text())["model_args"]
    assert args["base_architecture"] == "vit_tiny_patch16_224"
    assert args["block_heads"] == [1, 0, 2, 1] and args["block_mlp"] == [5, 20, 0, 16]
    back, _ = load_pruned(tmp_path / "again")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'again'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(X), model(X), rtol=0, atol=1e-6)
        torch.testing.assert_close(back(X), model(X), rtol=0, atol=1e-6)


def test_a_recipe_refuses_a_pruned_model_in_one_line(directory, tmp_path, capsys):
    from prune.cli import main

    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--set", f"model.name={directory}", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe key model.name" in err[0] and "already pruned" in err[0]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_is_generated_from_the_data(tmp_path):
    recipe = {"name": "r", "prune": {"ratio": 0.5, "units": ["ffn", "heads"]}}
    card = ModelCard(base_model="vit_tiny_patch16_224", stage="finetune", recipe=recipe, eval_split="test",
                     accuracy={"dense": {"top1": 0.9, "top5": 0.99, "images": 100},
                               "finetuned": {"top1": 0.8125, "top5": 0.97, "images": 100}})
    d = pruned_dir(tmp_path / "m", card)
    text = (d / "README.md").read_text()
    meta = front_matter(text)
    timm_cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
    assert meta["base_model"] == timm_cfg.hf_hub_id and meta["license"] == timm_cfg.license
    assert meta["library_name"] == "timm" and meta["tags"] == ["image-classification", "timm", "pruned", "prune"]
    assert "| 1 | 0 / 2 | 40 / 64 |" in text and "| 2 | 2 / 2 | 0 / 64 |" in text and "| all | 4 / 8 | 83 / 256 |" in text
    assert "| dense (base model) | 90.00 | 99.00 | 100 |" in text and "| pruned, fine-tuned | 81.25 | 97.00 | 100 |" in text
    params = sum(p.numel() for p in load_pruned(d)[0].parameters())
    assert f"{params:,} parameters" in text
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == recipe
    assert "Latency" in text.split("## Not in this card")[1]
    assert json.loads((d / "config.json").read_text())["pretrained_cfg"]["license"] == timm_cfg.license
    # without what a run knows, the card still describes the model and says what it lacks
    bare = pruned_dir(tmp_path / "bare")
    text = (bare / "README.md").read_text()
    assert front_matter(text)["base_model"] == "vit_tiny_patch16_224" and "license" not in front_matter(text)
    assert "Not measured" in text and "did not pass one" in text


def test_every_model_directory_of_a_run_loads_with_timm_and_has_a_card(tmp_path):
    """prune/, reconstruct/ and finetune/ of one run: timm's local-dir: equals load_pruned, and each card
    lists the accuracies the run had measured when it wrote it."""
    from prune.cli import main

    sets = ["importance.calibration_images=32", "data.eval_images=40", "finetune.epochs=1", "finetune.train_images=64",
            "prune.reconstruct=lstsq", "prune.reconstruct_images=32", "prune.units=[ffn,heads]",
            "export.enabled=false", "bench.enabled=false"]
    assert main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet",
                 *sum([["--set", s] for s in sets], [])]) == 0
    x = torch.randn(3, 3, 8, 8)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    measured = ["dense (base model)", "pruned, one-shot", "pruned, re-fitted", "pruned, fine-tuned"]
    rows = {"prune": [], "reconstruct": measured[:3], "finetune": measured}
    for stage, expected in rows.items():
        d = tmp_path / "run" / stage
        ours, _ = load_pruned(d)
        theirs = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-6)
        assert theirs.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
        text = (d / "README.md").read_text()
        assert front_matter(text)["base_model"] == "digits-vit"
        table = [l.split("|")[1].strip() for l in text.split("## Accuracy")[1].split("##")[0].splitlines()
                 if l.startswith("| ") and not l.startswith("| model")]
        assert table == expected
        assert ("Not measured" in text) == (not expected)
        assert "quickstart" in text.split("```yaml")[1]
    ft = (tmp_path / "run/finetune/README.md").read_text()
    top1 = summary["accuracy"]["finetuned"]["top1"]
    assert f"| pruned, fine-tuned | {100 * top1:.2f} |" in ft
