"""Layer-progressive pruning against references that share no code with `prune.schedule`:
each block scored one image and one step at a time on a model whose earlier blocks were cut for real,
the completeness identity of integrated gradients, and resume/determinism through the pipeline."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import trained_tiny_vit
from prune.cli import main
from prune.criteria import ImportanceContext, get_criterion
from prune.gates import ClassBalancedMean, block_attribution
from prune.schedule import progressive_table
from prune.units import FFN

X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 2, 3, 1])


def cut(model, kept):
    """A copy of `model` with block l's FFN reduced to the neurons in kept[l] (plain tensor slicing)."""
    model = copy.deepcopy(model)
    for l, idx in kept.items():
        mlp = model.blocks[l].mlp
        idx = torch.as_tensor(idx)
        fc1 = torch.nn.Linear(mlp.fc1.in_features, len(idx), dtype=mlp.fc1.weight.dtype)
        fc2 = torch.nn.Linear(len(idx), mlp.fc2.out_features, dtype=mlp.fc2.weight.dtype)
        with torch.no_grad():
            fc1.weight.copy_(mlp.fc1.weight[idx])
            fc1.bias.copy_(mlp.fc1.bias[idx])
            fc2.weight.copy_(mlp.fc2.weight[:, idx])
            fc2.bias.copy_(mlp.fc2.bias)
        mlp.fc1, mlp.fc2 = fc1, fc2
    return model


def ref_block_ig(model, block, steps):
    """|IG| of block's neurons per image, one image and one alpha at a time (a hook scales the activation)."""
    D = model.blocks[block].mlp.fc1.out_features
    per_image = []
    for x, y in zip(X, Y):
        total = torch.zeros(D, dtype=torch.float64)
        for k in range(steps):
            gate = torch.full((D,), k / steps, dtype=torch.float64, requires_grad=True)
            h = model.blocks[block].mlp.act.register_forward_hook(lambda m, i, o: o * gate)
            logp = model(x[None]).log_softmax(-1)[0, y]
            h.remove()
            (g,) = torch.autograd.grad(logp, gate)
            total += g / steps
        per_image.append(total.abs())
    by_class = {}
    for s, y in zip(per_image, Y.tolist()):
        by_class.setdefault(y, []).append(s)
    return sum(torch.stack(v).mean(0) for v in by_class.values())


def model64():
    return trained_tiny_vit().double()


def test_progressive_attribution_equals_bruteforce_on_really_pruned_models():
    model, steps = model64(), 3
    keep = [40, 20, 50, 10]
    ctx = ImportanceContext(model, path_images=lambda: [(X[:4], Y[:4]), (X[4:], Y[4:])], steps=steps)
    crit = get_criterion("path_attribution")
    table = progressive_table(model, FFN, lambda t: crit.score_block(ctx, FFN, t), keep, progress=False)
    kept = {}
    for t in range(4):
        ref = ref_block_ig(cut(model, kept), t, steps)  # blocks < t cut for real, block t dense
        torch.testing.assert_close(table[t], ref, rtol=1e-9, atol=1e-12)
        kept[t] = ref.topk(keep[t]).indices.sort().values
    # the one-shot table differs from the progressive one after block 0 (earlier removals matter)
    oneshot = crit.scores(ctx, FFN)
    torch.testing.assert_close(oneshot[0], table[0])
    assert not torch.allclose(oneshot[1:], table[1:])


def test_progressive_taylor_equals_taylor_on_really_pruned_models():
    model = model64()
    keep = [32, 16, 48, 8]
    batches = lambda: [(X[:3], Y[:3]), (X[3:], Y[3:])]  # noqa: E731
    crit = get_criterion("taylor")
    ctx = ImportanceContext(model, calibration=batches, example_inputs=X[:1])
    table = progressive_table(model, FFN, lambda t: crit.score_block(ctx, FFN, t), keep, progress=False)
    kept = {}
    for t in range(4):
        pruned = cut(model, kept)
        ref = crit.score_block(ImportanceContext(pruned, calibration=batches, example_inputs=X[:1]), FFN, t)
        torch.testing.assert_close(table[t], ref, rtol=1e-7, atol=1e-12)
        kept[t] = ref.topk(keep[t]).indices.sort().values


def test_integrated_gradients_are_complete():
    """sum_j IG_j = F(block intact) - F(block's FFN output removed), up to the Riemann error (m = 400)."""
    model = model64()
    ig = block_attribution(model, FFN, 2, X, Y, steps=400)
    with torch.no_grad():
        full = model(X).log_softmax(-1).gather(1, Y[:, None])[:, 0]
        h = model.blocks[2].mlp.act.register_forward_hook(lambda m, i, o: o * 0)
        none = model(X).log_softmax(-1).gather(1, Y[:, None])[:, 0]
        h.remove()
    err = (ig.sum(1) - (full - none)).abs()
    assert (err < 0.02 * (full - none).abs().max()).all(), err
    # a finer sum is closer (left Riemann error ~ 1/m)
    coarse = (block_attribution(model, FFN, 2, X, Y, steps=20).sum(1) - (full - none)).abs()
    assert err.max() < coarse.max()


def test_class_balanced_mean_weights_classes_equally():
    agg = ClassBalancedMean(3, 2)
    agg.add(torch.tensor([[1.0, -2.0], [3.0, 0.0], [-5.0, 1.0]]), torch.tensor([0, 0, 1]))
    agg.add(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    # class 0: mean |.| of 3 images = [5/3, 1]; class 1: [5, 1]; class 2 unseen
    torch.testing.assert_close(agg.value(), torch.tensor([5 / 3 + 5, 2.0], dtype=torch.float64))


SMALL = ["paths.images_per_class=3", "paths.steps=2", "importance.calibration_images=32", "data.eval_images=60",
         "finetune.epochs=0", "export.enabled=false", "bench.enabled=false", "importance.kind=path_attribution",
         "prune.mode=progressive", "prune.units=[ffn]", "prune.macs_ratio=null"]  # half of every block's FFN


def run(tmp_path, out, *extra):
    return main(["--recipe", "quickstart.yaml", "--out", str(tmp_path / out), "--quiet",
                 *sum([["--set", s] for s in SMALL + list(extra)], [])])


def test_progressive_run_is_deterministic_and_resumes_to_the_same_model(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "a", "prune.scope=global") == 0
    imp = load_file(tmp_path / "a/importance/importance.safetensors")
    widths = json.loads((tmp_path / "a/prune/prune.json").read_text())["widths"]
    assert imp["ffn.keep"].tolist() == widths and len(set(widths)) > 1 and sum(widths) == 6 * 128
    # interrupted at block 3 of the progressive pass (after the one-shot budget pass): the budget table and
    # the scored rows are kept, the rerun scores only the rest
    crit = get_criterion("path_attribution")
    original, calls = crit.score_block, []

    def flaky(ctx, unit, block):
        calls.append(block)
        if block == 3 and calls.count(3) == 2:
            raise KeyboardInterrupt
        return original(ctx, unit, block)

    monkeypatch.setattr(crit, "score_block", flaky)
    assert run(tmp_path, "b", "prune.scope=global") == 130
    assert not (tmp_path / "b/importance").exists()
    capsys.readouterr()
    calls.clear()
    assert run(tmp_path, "b", "prune.scope=global") == 0
    assert "resuming progressive scoring after block 2" in capsys.readouterr().out
    assert calls == [3, 4, 5]
    a, b = load_file(tmp_path / "a/prune/model.safetensors"), load_file(tmp_path / "b/prune/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b/.checkpoints").exists() or not any((tmp_path / "b/.checkpoints").iterdir())


def test_progressive_needs_a_criterion_that_scores_one_block(tmp_path, capsys):
    assert run(tmp_path, "c", "importance.kind=path_frequency") == 2
    err = capsys.readouterr().err
    assert "prune.mode progressive needs a criterion" in err and "path_attribution" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", ["taylor", "activation_taylor"])
def test_progressive_rivals_run_through_the_pipeline(tmp_path, kind):
    assert run(tmp_path, kind, f"importance.kind={kind}", "prune.scope=uniform") == 0
    info = json.loads((tmp_path / kind / "importance/importance.json").read_text())
    assert info["mode"] == "progressive" and info["keep"] == {"ffn": [128] * 6}


def test_budget_kind_sets_widths_and_importance_kind_picks_neurons(tmp_path):
    assert run(tmp_path, "d", "prune.mode=oneshot", "importance.kind=taylor", "prune.scope=global",
               "prune.budget_kind=path_attribution") == 0
    info = json.loads((tmp_path / "d/importance/importance.json").read_text())
    assert info["budget_kind"] == "path_attribution" and len(set(info["keep"]["ffn"])) > 1
    # the same widths as path_attribution's own global allocation, the neurons Taylor's best in each block
    assert run(tmp_path, "e", "prune.mode=oneshot", "prune.scope=global") == 0
    assert json.loads((tmp_path / "e/prune/prune.json").read_text())["widths"] == info["keep"]["ffn"]
    scores = load_file(tmp_path / "d/importance/importance.safetensors")["ffn.scores"]
    kept = json.loads((tmp_path / "d/prune/structure.json").read_text())["units"]["ffn"]["kept"]
    for row, k in zip(scores, kept):
        assert set(k) == set(row.topk(len(k)).indices.tolist())


def test_budget_kind_needs_global_scope(tmp_path, capsys):
    assert run(tmp_path, "f", "prune.mode=oneshot", "prune.scope=uniform", "prune.budget_kind=taylor") == 2
    assert "prune.budget_kind" in capsys.readouterr().err and not (tmp_path / "f").exists()
