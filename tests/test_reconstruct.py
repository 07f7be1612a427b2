"""The least-squares re-fit (`prune/reconstruct.py`): exact where the kept units can represent the dense
output, never worse than no re-fit on its own objective, and a stage whose model fine-tuning starts from."""

import copy
import json

import pytest
import torch
from conftest import trained_tiny_vit
from torch import nn

from prune.cli import main
from prune.models import ViTAdapter
from prune.reconstruct import refit


def duplicated_neurons(model):
    """Make FFN neurons 2k and 2k+1 of every block identical (same fc1 row and bias)."""
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.fc1.weight[1::2] = b.mlp.fc1.weight[0::2]
            b.mlp.fc1.bias[1::2] = b.mlp.fc1.bias[0::2]
    return model


def keep_even_neurons(model):
    """Remove every odd neuron, keeping the even ones' fc2 columns as they are (so the output is wrong)."""
    pruned = copy.deepcopy(model)
    for b in pruned.blocks:
        fc1, fc2 = b.mlp.fc1, b.mlp.fc2
        b.mlp.fc1, b.mlp.fc2 = nn.Linear(fc1.in_features, fc1.out_features // 2), nn.Linear(fc2.in_features // 2, fc2.out_features)
        with torch.no_grad():
            b.mlp.fc1.weight.copy_(fc1.weight[0::2])
            b.mlp.fc1.bias.copy_(fc1.bias[0::2])
            b.mlp.fc2.weight.copy_(fc2.weight[:, 0::2])
            b.mlp.fc2.bias.copy_(fc2.bias)
    return pruned


def batches(n=4, size=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 16, 16, generator=g),) for _ in range(n)]


def test_refit_is_exact_when_the_kept_neurons_can_represent_the_dense_output():
    dense = duplicated_neurons(trained_tiny_vit())
    pruned = keep_even_neurons(dense)
    x = batches(1, seed=9)[0][0]
    with torch.no_grad():
        assert (pruned(x) - dense(x)).abs().max() > 1e-2  # the cut changed the output
    rows = refit(pruned, dense, batches(), ridge=0.0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-4)
    assert all(r["error_after"] < 1e-8 for r in rows if r["branch"] == "ffn")


def test_refit_never_raises_a_branch_error_and_keeps_the_old_weights_when_the_fit_is_worse():
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    rows = refit(copy.deepcopy(pruned), dense, batches(), ridge=1e-3)
    assert all(r["error_after"] <= r["error_before"] for r in rows)
    assert any(r["error_after"] < r["error_before"] - 1e-6 for r in rows)
    # a ridge so strong the solution collapses to the bias: worse than the weights it has, so they stay
    strong = copy.deepcopy(pruned)
    rows = refit(strong, dense, batches(), ridge=1e12)
    kept = [r for r in rows if r["kept_old"]]
    assert kept and all(r["error_after"] == r["error_before"] for r in kept)


def test_refit_lowers_the_error_of_the_block_outputs_against_the_dense_stream():
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    fitted = copy.deepcopy(pruned)
    refit(fitted, dense, batches(), ridge=1e-3)
    x = batches(2, seed=11)[1][0]  # images the fit did not see

    def stream_error(model):
        a, b = ViTAdapter(model), ViTAdapter(dense)
        with torch.no_grad():
            xa, xb = a.embed(x), b.embed(x)
            for l in range(a.depth):
                xa, xb = a.post(l, *a.pre(l, xa)), b.post(l, *b.pre(l, xb))
        return (xa - xb).pow(2).mean().item()

    assert stream_error(fitted) < 0.5 * stream_error(pruned)


def test_reconstruct_stage_feeds_the_fine_tune_and_the_report(tmp_path):
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=1",
            "finetune.train_images=128", "export.enabled=false", "bench.enabled=false", "prune.units=[ffn,heads]",
            "prune.macs_ratio=0.6", "prune.max_layer_ratio=1.0", "prune.reconstruct=lstsq",
            "prune.reconstruct_images=64"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["accuracy"]) == ["dense", "pruned", "refitted", "finetuned"]
    assert summary["reconstruct"]["images"] == 64
    assert json.loads((out / "finetune/stage.json").read_text())["inputs"]["reads"] == ["reconstruct"]
    assert "refitted" in (out / "report/report.md").read_text()


def test_an_emptied_branch_gets_the_mean_of_what_it_should_add():
    from prune.units import FFN

    dense = trained_tiny_vit()
    pruned = copy.deepcopy(dense)
    FFN.empty(pruned, 1)  # block 1's FFN becomes its fc2 bias
    rows = refit(pruned, dense, batches(), ridge=1e-3)
    row = next(r for r in rows if r["block"] == 1 and r["branch"] == "ffn")
    assert row["error_after"] < row["error_before"]
