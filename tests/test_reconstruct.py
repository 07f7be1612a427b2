"""The least-squares re-fit (`prune/reconstruct.py`): exact where the kept units can represent the dense
output, never worse than no re-fit on its own objective, and a stage whose model fine-tuning starts from;
blockwise training after it: never worse than its start, better than least squares where a linear fit
of one matrix cannot undo the cut, and the same in one process as in two."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import trained_tiny_vit
from safetensors.torch import load_file
from test_multiprocess import LAUNCH, env
from torch import nn

from prune.cli import main
from prune.models import ViTAdapter
from prune.reconstruct import blockwise, refit, refit_head


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


def test_the_head_refit_is_exact_when_the_features_are_the_dense_ones_and_never_worse():
    dense = trained_tiny_vit()
    wrong = copy.deepcopy(dense)
    with torch.no_grad():  # same features, a scrambled classifier: the exact fit is the dense head
        wrong.head.weight.copy_(torch.randn_like(wrong.head.weight))
        wrong.head.bias.add_(1.0)
    x = batches(1, seed=9)[0][0]
    row = refit_head(wrong, dense, batches(), ridge=0.0)
    assert row["error_after"] < 1e-8 < row["error_before"] and not row["kept_old"]
    with torch.no_grad():
        torch.testing.assert_close(wrong(x), dense(x), rtol=1e-4, atol=1e-4)
    # on a real cut it lowers the logits' error; a ridge that collapses it to the bias keeps the old head
    pruned = keep_even_neurons(dense)
    refit(pruned, dense, batches(), ridge=1e-3)
    row = refit_head(copy.deepcopy(pruned), dense, batches(), ridge=1e-3)
    assert row["error_after"] < row["error_before"]
    head = pruned.head.weight.clone()
    row = refit_head(pruned, dense, batches(), ridge=1e12)
    assert row["kept_old"] and row["error_after"] == row["error_before"] and torch.equal(pruned.head.weight, head)


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


def stream_error(model, dense, x):
    """Mean squared difference of the residual stream after the last block from the dense model's."""
    a, b = ViTAdapter(model), ViTAdapter(dense)
    with torch.no_grad():
        xa, xb = a.embed(x), b.embed(x)
        for l in range(a.depth):
            xa, xb = a.post(l, *a.pre(l, xa)), b.post(l, *b.pre(l, xb))
    return (xa - xb).pow(2).mean().item()


def test_blockwise_is_never_worse_than_its_start_and_keeps_it_when_training_is_worse():
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    rows = blockwise(copy.deepcopy(pruned), dense, batches(), steps=10, lr=1e-3, start="pruned")
    assert [r["branch"] for r in rows] == ["block"] * 4  # no least-squares rows when starting from the cut
    assert all(r["error_after"] <= r["error_before"] for r in rows)
    # a learning rate so large that training diverges: every block keeps the weights it started from
    wild = copy.deepcopy(pruned)
    rows = blockwise(wild, dense, batches(), steps=5, lr=1.0, start="pruned")
    assert all(r["kept_old"] and r["error_after"] == r["error_before"] for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(wild.state_dict().values(), pruned.state_dict().values()))


def test_blockwise_from_the_least_squares_start_lowers_the_error_below_it():
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    fitted, trained = copy.deepcopy(pruned), copy.deepcopy(pruned)
    refit(fitted, dense, batches(), ridge=1e-3)
    rows = blockwise(trained, dense, batches(), steps=40, lr=1e-3, start="lstsq", ridge=1e-3)
    assert [r["branch"] for r in rows[:3]] == ["attn", "ffn", "block"]
    blocks = [r for r in rows if r["branch"] == "block"]
    assert all(r["error_after"] < r["error_before"] for r in blocks)
    x = batches(2, seed=11)[1][0]  # images the fit did not see
    assert stream_error(trained, dense, x) < 0.7 * stream_error(fitted, dense, x)


def test_blockwise_stage_runs_end_to_end_and_keys_its_fields(tmp_path):
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0",
            "export.enabled=false", "bench.enabled=false", "prune.units=[ffn,heads]", "prune.macs_ratio=0.6",
            "prune.max_layer_ratio=1.0", "prune.reconstruct=blockwise", "prune.reconstruct_images=64",
            "prune.reconstruct_steps=3", "prune.reconstruct_lr=1e-3"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "refitted" in summary["accuracy"] and summary["reconstruct"]["method"] == "blockwise"
    assert summary["reconstruct"]["reconstruct_steps"] == 3
    key = json.loads((out / "reconstruct/stage.json").read_text())["inputs"]["reconstruct"]
    assert key["reconstruct_steps"] == 3 and key["reconstruct_lr"] == 1e-3 and key["reconstruct_start"] == "lstsq"
    assert key["reconstruct_head_images"] == 1024
    rows = json.loads((out / "reconstruct/metrics.json").read_text())["branches"]
    assert {r["branch"] for r in rows} == {"attn", "ffn", "block", "head"}
    assert all(r["error_after"] <= r["error_before"] for r in rows)


BLOCKWISE_SCRIPT = textwrap.dedent('''
    import sys, torch
    from safetensors.torch import save_file
    from conftest import trained_tiny_vit
    from test_reconstruct import keep_even_neurons
    from prune import dist
    from prune.reconstruct import blockwise

    assert dist.world() == int(sys.argv[2])  # two processes really split the images
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    x = torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ids = dist.shard(list(range(48)))  # interleaved shares; the ids say which image is which
    batches = [(x[ids[i:i + 8]], torch.tensor(ids[i:i + 8])) for i in range(0, len(ids), 8)]
    blockwise(pruned, dense, batches, steps=8, lr=1e-3, start="lstsq", reduce=dist.reduce_sum,
              gather=dist.gather_lists)
    if dist.is_main():
        save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, sys.argv[1])
''')


def test_blockwise_takes_the_same_steps_in_one_process_and_in_two(tmp_path):
    script = tmp_path / "blockwise.py"
    script.write_text(BLOCKWISE_SCRIPT)
    for name, launcher in (("1", [sys.executable]), ("2", LAUNCH)):
        res = subprocess.run([*launcher, str(script), str(tmp_path / f"{name}.safetensors"), name], env=env(),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, [l for l in res.stderr.splitlines() if "rror" in l][:8]
    a, b = load_file(tmp_path / "1.safetensors"), load_file(tmp_path / "2.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_weighted_normal_equations_solve_the_weighted_least_squares_problem():
    """Token weights against an independent truth: `torch.linalg.lstsq` on rows scaled by sqrt(weight)."""
    from prune.reconstruct import NormalEquations

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 9, 5, generator=g, dtype=torch.float64), torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    w = torch.rand(9, generator=g, dtype=torch.float64) + 0.1  # one weight per token, broadcast over images
    eq = NormalEquations(5, 3, "cpu")
    eq.add(x, t, w)
    rows = torch.cat([x.reshape(-1, 5), torch.ones(18, 1, dtype=torch.float64)], 1)
    root = w.sqrt().repeat(2)[:, None]
    truth = torch.linalg.lstsq(rows * root, t.reshape(-1, 3) * root).solution
    torch.testing.assert_close(eq.solve(0.0), truth, rtol=1e-8, atol=1e-8)
    unweighted = NormalEquations(5, 3, "cpu")
    unweighted.add(x, t)
    assert not torch.allclose(unweighted.solve(0.0), truth)  # the weights changed the fit


def test_the_prefix_share_sets_the_cls_token_weight_and_only_the_prefix_rows_change():
    from prune.reconstruct import prefix_weight_for, token_weights

    model = trained_tiny_vit()  # 16 patches + 1 CLS token
    assert prefix_weight_for(model, None) == 1.0
    assert prefix_weight_for(model, 0.5) == pytest.approx(16.0)  # the CLS token counts as much as all patches
    assert prefix_weight_for(model, 0.8) == pytest.approx(64.0)
    assert token_weights(model, 0, 17) is None  # all alike: the unweighted equations
    w = token_weights(model, 0, 17, 16.0)
    assert w[0] == 16.0 and (w[1:] == 1.0).all()


def test_a_prefix_weighted_refit_fits_the_cls_token_better_and_the_recipe_keys_it(tmp_path):
    dense = trained_tiny_vit()
    pruned = keep_even_neurons(dense)
    x = batches(2, seed=11)[1][0]

    def cls_error(model):
        with torch.no_grad():
            return (model.forward_features(x)[:, 0] - dense.forward_features(x)[:, 0]).pow(2).mean().item()

    plain, weighted = copy.deepcopy(pruned), copy.deepcopy(pruned)
    refit(plain, dense, batches(8), ridge=1e-3)
    refit(weighted, dense, batches(8), ridge=1e-3, prefix_weight=16.0)
    assert cls_error(weighted) < cls_error(plain)
    sets = ["importance.calibration_images=64", "data.eval_images=60", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.reconstruct=lstsq", "prune.reconstruct_images=64"]
    out = tmp_path / "run"
    argv = ["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]
    assert main([*argv, "--set", "prune.reconstruct_prefix_share=null"]) == 0  # every token alike
    assert json.loads((out / "reconstruct/metrics.json").read_text())["prefix_weight"] == 1.0
    assert main([*argv, "--update", "--set", "prune.reconstruct_prefix_share=0.5"]) == 0  # a new key: re-fitted
    m = json.loads((out / "reconstruct/metrics.json").read_text())
    assert m["prefix_share"] == 0.5 and m["prefix_weight"] == pytest.approx(16.0)  # digits-vit: 16 patches, 1 CLS
    assert main([*argv, "--update", "--set", "prune.reconstruct_prefix_share=1.5"]) == 2  # a share is below 1
