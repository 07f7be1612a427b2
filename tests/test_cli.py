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
