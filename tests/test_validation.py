"""Bad input of every kind: one `prune: error:` line, exit 2, no traceback, nothing written."""

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from prune.cli import main
from prune.models import ASSETS
from prune.recipe import PACKAGED

QUICK = PACKAGED / "quickstart.yaml"


def fails_cleanly(capsys, argv, out: Path | None, *needles):
    """`argv` exits 2 with one error line naming the problem, and writes nothing to `out`."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    if out is not None:
        assert not out.exists()
    return err


@pytest.mark.parametrize("text, needle", [
    ("", "is empty"), ("- model\n- data\n", "must be a mapping"), ("model: {name: x\n", "not valid YAML"),
    ("42\n", "must be a mapping"), ("model: [1, 2]\n", "recipe"), ("prune: {ratio: 2}\n", "prune.ratio"),
    ("prune: {nope: 1}\n", "prune.nope: unknown key"), ("paths: {steps: many}\n", "paths.steps"),
    ("finetune: {distill: {alpha: 3}}\n", "finetune.distill.alpha"), ("importance: {kind: psychic}\n", "unknown kind"),
])
def test_bad_recipe_files(tmp_path, capsys, text, needle):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    fails_cleanly(capsys, ["--recipe", str(f), "--out", str(tmp_path / "run")], tmp_path / "run", needle)


def test_missing_recipe(tmp_path, capsys):
    fails_cleanly(capsys, ["--recipe", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "run")],
                  tmp_path / "run", "not found")


def model_dir(tmp_path, config=None, weights=True):
    d = tmp_path / "model"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config)
    if weights is True:
        shutil.copy(ASSETS / "digits_vit" / "model.safetensors", d)
    elif weights:
        (d / "model.safetensors").write_bytes(weights)
    return d


DIGITS_CONFIG = (ASSETS / "digits_vit" / "config.json").read_text()


def wider(cfg: str) -> str:
    c = json.loads(cfg)
    c["model_kwargs"]["embed_dim"] = 32
    return json.dumps(c)


@pytest.mark.parametrize("config, weights, needle", [
    (None, True, "has no config.json"), ("{bad", True, "not readable JSON"), ("[]", True, "no 'architecture'"),
    ('{"architecture": "no_such_net"}', True, "unknown model"), (DIGITS_CONFIG, b"garbage", "not a readable safetensors"),
    (wider(DIGITS_CONFIG), True, "does not fit"), (DIGITS_CONFIG, False, "has no model.safetensors"),
    (json.dumps({"architecture": "resnet18", "model_kwargs": {"num_classes": 10}}), False, "not a timm VisionTransformer"),
])
def test_bad_model_directories(tmp_path, capsys, config, weights, needle):
    d = model_dir(tmp_path, config, weights)
    pretrained = [] if "resnet" not in (config or "") else ["--set", "model.pretrained=false"]
    fails_cleanly(capsys, ["--recipe", str(QUICK), "--out", str(tmp_path / "run"), "--set", f"model.name={d}",
                           *pretrained], tmp_path / "run", "recipe key model.name", needle)


@pytest.mark.parametrize("override, needle", [
    ("data.source=/no/such/dir", "data.source"), ("data.train_split=nope", "data.train_split"),
    ("data.eval_split=validation", "data.eval_split"), ("data.image_column=pixels", "data.image_column"),
    ("data.label_column=target", "data.label_column"), ("model.name=no_such_model_xyz", "unknown model"),
    ("paths.top_k=100000", "top_k"),
])
def test_bad_data_and_model_names(tmp_path, capsys, override, needle):
    fails_cleanly(capsys, ["--recipe", str(QUICK), "--out", str(tmp_path / "run"), "--set", override],
                  tmp_path / "run", needle)


def test_bad_targets_of_bench_and_export(tmp_path, capsys):
    fake = tmp_path / "fake.onnx"
    fake.write_text("not onnx")
    fails_cleanly(capsys, ["bench", str(fake)], None, "not a valid ONNX model")
    fails_cleanly(capsys, ["bench", str(tmp_path / "missing.onnx")], None, "does not exist")
    fails_cleanly(capsys, ["export", str(fake)], None, "neither a run directory")
    fails_cleanly(capsys, ["export", str(tmp_path)], None, "neither a run directory")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/recipe.yaml").write_text(QUICK.read_text())
    fails_cleanly(capsys, ["export", str(tmp_path / "run")], None, "no pruned model yet")
    fails_cleanly(capsys, ["bench", str(tmp_path / "run")], None, "no pruned model yet")


def mutations(text: str, rng: random.Random):
    """Random corruptions of a valid recipe: deleted lines, swapped value types, truncation, junk."""
    lines = text.splitlines()
    kinds = ["delete", "swap", "truncate", "junk", "indent"]
    for _ in range(40):
        kind = rng.choice(kinds)
        new = list(lines)
        i = rng.randrange(len(new))
        if kind == "delete":
            del new[i]
        elif kind == "swap" and ":" in new[i]:
            key, _, _ = new[i].partition(":")
            new[i] = f"{key}: {rng.choice(['[1, 2]', '{a: 1}', 'yes', '-3', '0.0', 'text', '', '1e9'])}"
        elif kind == "truncate":
            new = "\n".join(new)[:rng.randrange(len(text))].splitlines()
        elif kind == "junk":
            new.insert(i, rng.choice(["%%%", "- - -", "key_without_value", ": : :", "\t\tx: 1"]))
        else:
            new[i] = "   " + new[i]
        yield kind, "\n".join(new) + "\n"


def test_random_corruptions_never_trace_back_or_write(tmp_path, capsys, monkeypatch):
    import prune.pipeline as pipeline

    ran = []
    monkeypatch.setattr(pipeline.Pipeline, "run", lambda self, force=frozenset(): ran.append(1) or {})
    monkeypatch.setattr("prune.commands.recipe.print_summary", lambda s, out: None)
    rng = random.Random(0)
    outcomes = {0: 0, 2: 0}
    for n, (kind, text) in enumerate(mutations(QUICK.read_text(), rng)):
        f = tmp_path / f"r{n}.yaml"
        f.write_text(text)
        out = tmp_path / f"run{n}"
        rc = main(["--recipe", str(f), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc in (0, 2), (kind, text, err)
        assert "Traceback" not in err
        if rc == 2:
            assert err.startswith("prune: error: ") and len(err.strip().splitlines()) == 1, (kind, err)
            assert not out.exists(), (kind, text)
        outcomes[rc] += 1
    assert outcomes[2] >= 10  # most corruptions are caught ...
    assert len(ran) == outcomes[0]  # ... and the rest are valid recipes that would run


def test_a_recipe_capping_heads_runs_with_ffn_only_and_a_floor_on_an_unpruned_kind_is_refused(tmp_path, capsys):
    """The README's advice below ~1.5x (`--set prune.units=[ffn]` on the CIFAR recipe, whose caps name heads):
    a cap or rounding of a kind left alone constrains nothing and is dropped; a floor would demand the impossible."""
    from prune.recipe import load_recipe

    r = load_recipe("cifar10_vit_tiny_50pct.yaml", ["prune.units=[ffn]"])
    assert r.prune.units == ["ffn"] and r.prune.max_layer_ratio == {"ffn": 1.0}
    r = load_recipe("vit_b16_50pct.yaml", ["prune.units=[ffn]", "prune.round_to={ffn: 64, heads: 2}"])
    assert r.prune.round_to == {"ffn": 64} and "heads" not in r.prune.max_layer_ratio
    assert load_recipe("quickstart.yaml", ["prune.units=[ffn]", "prune.min_layer_ratio={heads: 0.0}"]).prune.min_layer_ratio == {}
    fails_cleanly(capsys, ["--recipe", str(QUICK), "--set", "prune.units=[ffn]", "--set",
                           "prune.min_layer_ratio={ffn: 0.1, heads: 0.2}", "--out", str(tmp_path / "run")],
                  tmp_path / "run", "prune.min_layer_ratio makes blocks lose heads", "add it to prune.units")
