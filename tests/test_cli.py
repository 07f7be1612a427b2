import json
import subprocess
import sys

import pytest

from prune.cli import main
from prune.paths import PathResult, PathStats


def test_paths_on_embedded_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["paths", "--out", str(out), "--images-per-class", "2", "--steps", "2", "--top-k", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 20 and summary["images_per_class"] == [2] * 10
    stats = PathStats.load(out / "stats.safetensors")
    assert stats.counts.tolist() == [2] * 10 and stats.freq.shape == (10, 6, 256)
    assert int(stats.freq.sum()) == 20 * 6 * 2
    res = PathResult.load(out / "paths.safetensors")
    assert res.neurons.shape == (20, 6, 2) and res.rows is not None
    assert summary["mean_jas"] == pytest.approx(res.scores.double().mean().item(), rel=1e-6)
    assert set(summary["probability_deviation"]) == {"remove", "enhance"}
    assert summary["peak_memory"]["host_rss_mb"] > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--data", "./no/such/dir"], "dataset path ./no/such/dir does not exist"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--model", "./missing_model_dir_xyz"], "model directory ./missing_model_dir_xyz does not exist"),
    (["--model", "vit_nonexistent_xyz"], "unknown model 'vit_nonexistent_xyz'"),
    (["--split", "validation"], "has splits train, test, not 'validation'"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prune.cli", "paths", "--out", str(out), "--quiet", *args],
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("prune: error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_help_explains_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["paths", "--help"])
    text = capsys.readouterr().out
    assert "--images-per-class" in text and "influence_pattern" in text


@pytest.mark.parametrize("command", ["paths", "recipes", "specialize", "export", "bench"])
def test_every_subcommand_help_has_an_example_and_no_misleading_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text.lower()
    for bad in ("(default: None)", "(default: True)", "(default: False)", ") (default:"):
        assert bad not in text, bad


@pytest.mark.parametrize("argv, key, value", [
    (["paths", "--steps", "0"], "paths.steps", "0"), (["paths", "--top-k", "0"], "paths.top_k", "0"),
    (["paths", "--images-per-class", "0"], "paths.images_per_class", "0"),
    (["paths", "--batch-size", "0"], "paths.batch_size", "0"),
    (["bench", "digits-vit", "--repeats", "0"], "bench.repeats", "0"),
    (["bench", "digits-vit", "--warmup", "-1"], "bench.warmup", "-1"),
    (["bench", "digits-vit", "--threads", "0"], "bench.threads", "0"),
    (["bench", "digits-vit", "--batch-sizes", "1,0"], "bench.batch_sizes", "[1,0]"),
    (["export", "runs/x", "--opset", "17"], "export.opset", "17"), (["export", "runs/x", "--atol", "0"], "export.atol", "0"),
    (["export", "runs/x", "--max-int8-drop", "1"], "export.max_int8_drop", "1"),
    (["export", "runs/x", "--quantize", "int4"], "export.quantize", "[int4]"),
    (["export", "runs/x", "--images", "0"], "data.eval_images", "0"),
])
def test_an_option_shared_with_a_recipe_key_has_the_same_range(tmp_path, capsys, argv, key, value):
    """The CLI checks these options with the recipe schema's own constraints: both refuse the same value."""
    from prune.errors import ConfigError
    from prune.recipe import load_recipe

    if argv[0] == "paths":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune: error: ") and f"recipe key {key}" in err[0], err
    with pytest.raises(ConfigError, match=f"recipe key {key}"):
        load_recipe("quickstart.yaml", [f"{key}={value}"])
    assert not (tmp_path / "out").exists()


def test_option_choices_are_the_recipe_schema_s():
    import typing

    from prune.cli import build_parser
    from prune.recipe import PathsCfg

    paths = build_parser()._subparsers._group_actions[0].choices["paths"]
    choices = {a.dest: a.choices for a in paths._actions if a.choices}
    for field in ("method", "scope", "target"):
        assert list(choices[field]) == list(typing.get_args(PathsCfg.model_fields[field].annotation))
