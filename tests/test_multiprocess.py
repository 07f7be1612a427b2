"""Two processes (`accelerate launch`, gloo on CPU) against one: same statistics, scores, models and accuracy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SMALL = ["paths.images_per_class=4", "paths.steps=3", "importance.calibration_images=64", "finetune.epochs=1",
         "finetune.train_images=256", "finetune.batch_size=64", "bench.enabled=false",
         "importance.kind=path_frequency", "prune.scope=global", "prune.budget_kind=path_attribution",
         "prune.reconstruct=lstsq", "prune.reconstruct_images=64"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": str(Path(__file__).parent)}


def prune_cmd(out, launcher=()):
    sets = sum([["--set", s] for s in SMALL], [])
    return [*launcher, *([] if launcher else [sys.executable]), "-m", "prune.cli", "--recipe", "quickstart.yaml",
            "--out", str(out), "--quiet", *sets]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    one = subprocess.run(prune_cmd(root / "one"), env=env(), capture_output=True, text=True, timeout=600)
    two = subprocess.run(prune_cmd(root / "two", LAUNCH), env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, [l for l in two.stderr.splitlines() if "error" in l.lower()][:5]
    return root / "one", root / "two", two.stdout


def test_two_processes_really_split_the_work(runs):
    one, two, stdout = runs
    assert json.loads((two / "paths/summary.json").read_text())["processes"] == 2
    assert json.loads((two / "importance/importance.json").read_text())["processes"] == 2
    assert stdout.count("run directory:") == 1 and stdout.count("[prune] running") == 1  # one voice


def test_discovery_scoring_pruning_and_evaluation_match_one_process(runs):
    one, two, _ = runs
    a, b = load_file(one / "paths/stats.safetensors"), load_file(two / "paths/stats.safetensors")
    assert torch.equal(a["counts"], b["counts"]) and torch.equal(a["freq"], b["freq"])
    for k in ("score_sum", "score_norm_sum", "jas_sum"):  # float sums in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    a, b = load_file(one / "importance/importance.safetensors"), load_file(two / "importance/importance.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9)
    a, b = load_file(one / "prune/model.safetensors"), load_file(two / "prune/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for stage in ("baseline", "evaluate"):
        assert (json.loads((one / stage / "metrics.json").read_text())
                == json.loads((two / stage / "metrics.json").read_text()))


def test_reconstruct_sums_the_normal_equations_of_both_processes(runs):
    one, two, _ = runs
    a, b = load_file(one / "reconstruct/model.safetensors"), load_file(two / "reconstruct/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    m1, m2 = (json.loads((r / "reconstruct/metrics.json").read_text()) for r in (one, two))
    assert m1["images"] == m2["images"] == 64 and m1["refitted"] == m2["refitted"]


def test_finetune_with_the_same_global_batch_matches_one_process(runs):
    """Tolerance: every weight within 1e-3 and top-1 within one image of 360 (float sums in another
    order, amplified by AdamW's normalisation where gradients are tiny)."""
    one, two, _ = runs
    a, b = load_file(one / "finetune/model.safetensors"), load_file(two / "finetune/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    h1, h2 = ([h for h in json.loads((r / "finetune/history.json").read_text()) if "train_loss" in h][0]
              for r in (one, two))
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-4)
    m1, m2 = (json.loads((r / "finetune/metrics.json").read_text()) for r in (one, two))
    assert abs(m1["finetuned"]["top1"] - m2["finetuned"]["top1"]) <= 1 / 360 + 1e-9
    assert m1["finetuned"]["images"] == m2["finetuned"]["images"] == 360
    # the held-out slice judges both alike: the same one-shot accuracy and the same epoch kept
    r1, r2 = m1["recovery"], m2["recovery"]
    assert r1["oneshot"] == r2["oneshot"] and r1["best_epoch"] == r2["best_epoch"] and r1["holdout_images"] > 0


def test_only_the_main_process_writes(runs):
    one, two, _ = runs
    files = lambda r: sorted(str(p.relative_to(r)) for p in r.rglob("*") if p.is_file())  # noqa: E731
    assert files(one) == files(two)


def test_a_process_with_only_bad_rows_does_not_hang_the_other(tmp_path):
    script = tmp_path / "bad_rows.py"
    script.write_text(textwrap.dedent('''
        import json, sys, torch
        from conftest import tiny_vit
        from prune import dist
        from prune.data import BadRow
        from prune.finetune import TrainConfig, train

        class Data(torch.utils.data.Dataset):  # every row is bad on process 1
            def __len__(self):
                return 32
            def __getitem__(self, i):
                if dist.state().process_index == 1:
                    return BadRow(i, "bad")
                g = torch.Generator().manual_seed(i)
                return torch.randn(3, 16, 16, generator=g), i % 5, i

        history = train(tiny_vit(), Data(), None, TrainConfig(epochs=2, batch_size=8), progress=False)
        if dist.is_main():
            print(json.dumps(history))
    '''))
    res = subprocess.run([*LAUNCH, str(script)], env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, [l for l in res.stderr.splitlines() if "rror" in l][:8]
    history = json.loads(res.stdout.strip().splitlines()[-1])
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_loss"] > 0 for h in history)
