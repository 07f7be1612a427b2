"""Attention heads as a prunable unit, emptied blocks, the MACs budget, one-pass scoring, keep-best recovery."""

import copy
import json
import math

import pytest
import timm
import torch
from torch import nn

from prune.budget import allocate_macs, layer_cap, layer_floor, max_removable_macs
from prune.recipe import PruneCfg
from prune.errors import ConfigError
from prune.gates import block_attribution, first_order_tables, unit_masks
from prune.models import ModelSpec
from prune.checkpoint import load_pruned, save_pruned
from prune.budget import check_budget, count_params_macs, plan_keep, tokens
from prune.pruning import prune_units
from prune.units import FFN, HEADS, is_empty

KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)
X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 3, 4, 0])


def vit(seed=0, **kw):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**KW, **kw}).eval()
    with torch.no_grad():  # timm zero-initialises biases; give them values so bias handling is tested
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def masks(model, unit, removed: dict[int, list[int]]):
    out = []
    for l, w in enumerate(unit.widths(model)):
        m = torch.ones(w)
        m[removed.get(l, [])] = 0
        out.append(m)
    return out


def table_removing(widths, removed: dict[int, list[int]]):
    """A score table whose lowest entries are exactly `removed`."""
    t = torch.ones(len(widths), max(widths), dtype=torch.float64) + torch.rand(len(widths), max(widths), dtype=torch.float64)
    for l, idx in removed.items():
        t[l, idx] = 0
    return t


def test_head_removal_equals_hand_sliced_reference_and_zeroed_gates():
    model = vit()
    removed = {0: [1], 1: [0, 3], 2: []}
    with torch.no_grad(), unit_masks(model, HEADS, masks(model, HEADS, removed)):
        gated = model(X)
    # hand-sliced reference: drop the heads' q, k, v rows and proj columns, built without Torch-Pruning
    ref = copy.deepcopy(model)
    for l, gone in removed.items():
        a = ref.blocks[l].attn
        keep = [h for h in range(a.num_heads) if h not in gone]
        hd, dim = a.head_dim, a.num_heads * a.head_dim
        rows = [s * dim + h * hd + j for s in range(3) for h in keep for j in range(hd)]
        cols = [h * hd + j for h in keep for j in range(hd)]
        qkv = nn.Linear(a.qkv.in_features, len(rows))
        qkv.weight.data, qkv.bias.data = a.qkv.weight.data[rows].clone(), a.qkv.bias.data[rows].clone()
        proj = nn.Linear(len(cols), a.proj.out_features)
        proj.weight.data, proj.bias.data = a.proj.weight.data[:, cols].clone(), a.proj.bias.data.clone()
        a.qkv, a.proj, a.num_heads, a.attn_dim = qkv, proj, len(keep), len(keep) * hd
    widths = HEADS.widths(model)
    kept = prune_units(model, HEADS, table_removing(widths, removed), PruneCfg(scope="uniform"), X[:1],
                       keep=[w - len(removed[l]) for l, w in enumerate(widths)])
    assert kept == [[0, 2, 3], [1, 2], [0, 1, 2, 3]]
    assert HEADS.widths(model) == [3, 2, 4] and model.blocks[1].attn.qkv.out_features == 3 * 2 * 8
    assert all(b.attn.scale == 8 ** -0.5 for b in model.blocks)  # head_dim unchanged, so is the scale
    with torch.no_grad():
        out, hand = model(X), ref(X)
    torch.testing.assert_close(out, hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, gated, rtol=0, atol=1e-5)
    assert not torch.allclose(out, vit()(X), atol=1e-3)  # the heads mattered


def test_emptied_block_equals_zeroed_gates_and_survives_save_load(tmp_path):
    model = vit()
    ffn_removed = {1: list(range(64)), 2: list(range(0, 64, 3))}
    head_removed = {1: [0, 1, 2, 3], 0: [2]}
    with torch.no_grad(), unit_masks(model, FFN, masks(model, FFN, ffn_removed)), \
            unit_masks(model, HEADS, masks(model, HEADS, head_removed)):
        gated = model(X)
    fw, hw = FFN.widths(model), HEADS.widths(model)
    kept = {}
    kept["ffn"] = prune_units(model, FFN, table_removing(fw, ffn_removed), PruneCfg(scope="uniform"), X[:1],
                              keep=[w - len(ffn_removed.get(l, [])) for l, w in enumerate(fw)])
    kept["heads"] = prune_units(model, HEADS, table_removing(hw, head_removed), PruneCfg(scope="uniform"), X[:1],
                                keep=[w - len(head_removed.get(l, [])) for l, w in enumerate(hw)])
    b = model.blocks[1]
    assert is_empty(b.attn) and is_empty(b.mlp) and isinstance(b.norm1, nn.Identity) and isinstance(b.norm2, nn.Identity)
    assert FFN.widths(model) == [64, 0, 64 - 22] and HEADS.widths(model) == [3, 0, 4]
    with torch.no_grad():
        torch.testing.assert_close(model(X), gated, rtol=0, atol=1e-5)
    # the emptied block costs nothing but its two bias additions
    _, macs = count_params_macs(model, X[:1])
    _, dense_macs = count_params_macs(vit(), X[:1])
    T = tokens(model)
    saved = (sum(len(v) for v in ffn_removed.values()) * FFN.cost(vit(), T)[0]
             + sum(len(v) for v in head_removed.values()) * HEADS.cost(vit(), T)[0])
    assert dense_macs - macs == saved
    # per-block head counts and the emptied block survive save/load (structure v2)
    save_pruned(model, tmp_path, ModelSpec("vit_tiny_patch16_224", KW), kept,
                {"ffn": fw, "heads": hw}, {"input_size": [3, 16, 16]})
    structure = json.loads((tmp_path / "structure.json").read_text())
    assert structure["format"] == "prune.PrunedViT/2" and structure["units"]["heads"]["widths"] == [3, 0, 4]
    assert "timm_mlp_ratio" not in structure
    loaded, _ = load_pruned(tmp_path)
    assert HEADS.widths(loaded) == [3, 0, 4] and FFN.widths(loaded) == [64, 0, 42]
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), gated, rtol=0, atol=1e-5)


def test_head_pruned_model_exports_to_onnx_with_parity(tmp_path):
    from prune.export import export_checked

    model = vit()
    hw = HEADS.widths(model)
    prune_units(model, HEADS, table_removing(hw, {0: [0], 2: [1, 2, 3]}), PruneCfg(scope="uniform"), X[:1], keep=[3, 4, 1])
    fw = FFN.widths(model)
    prune_units(model, FFN, table_removing(fw, {1: list(range(64))}), PruneCfg(scope="uniform"), X[:1], keep=[64, 0, 64])
    info = export_checked(model, torch.cat([X, X])[:8], tmp_path / "m.onnx", opset=18, atol=1e-4)
    assert (tmp_path / "m.onnx").is_file()
    assert all(v["max_abs_diff"] < 1e-4 for k, v in info["parity"].items() if k.startswith("batch_"))


def test_structure_v1_still_loads(tmp_path):
    model = vit()
    fw = FFN.widths(model)
    kept = prune_units(model, FFN, torch.rand(3, 64, dtype=torch.float64), PruneCfg(ratio=0.5, scope="uniform"), X[:1])
    save_pruned(model, tmp_path, ModelSpec("vit_tiny_patch16_224", KW), {"ffn": kept}, {"ffn": fw})
    s = json.loads((tmp_path / "structure.json").read_text())
    v1 = {k: v for k, v in s.items() if k != "units"}
    v1.update(format="prune.PrunedViT/1", dense_widths=fw, widths=[len(k) for k in kept], kept=kept)
    (tmp_path / "structure.json").write_text(json.dumps(v1))
    loaded, _ = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))


def test_head_and_neuron_costs_are_what_the_counter_measures():
    model = vit()
    _, dense = count_params_macs(model, X[:1])
    T = tokens(model)
    assert T == 17
    for unit, n in ((FFN, 5), (HEADS, 1), (HEADS, 2)):
        m = vit()
        w = unit.widths(m)
        prune_units(m, unit, torch.rand(3, max(w), dtype=torch.float64), PruneCfg(scope="uniform"), X[:1], keep=[w[0] - n, w[1], w[2]])
        _, after = count_params_macs(m, X[:1])
        assert dense - after == n * unit.cost(vit(), T)[0]
    # the head's cost: q, k, v rows and proj column at every token + both attention matmuls
    assert HEADS.cost(model, T)[0] == T * 8 * (4 * 32 + 2 * T)


def brute_force_check(tables, widths, costs, target, settings, kept):
    removed = sum((w - k) * c for kind in widths for w, k, c in zip(widths[kind], kept[kind], costs[kind]))
    assert removed >= target
    for kind in widths:
        for w, k in zip(widths[kind], kept[kind]):
            assert w - k <= math.floor(w * layer_cap(settings, kind) + 1e-9)  # cap
            assert w - k >= math.ceil(w * layer_floor(settings, kind) - 1e-9)  # floor
    return removed


def test_allocation_ranks_by_score_per_cost_with_floors_and_caps():
    widths = {"ffn": [4, 4], "heads": [2, 2]}
    costs = {"ffn": [10, 10], "heads": [100, 100]}
    tables = {"ffn": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "heads": torch.tensor([[20.0, 900], [50, 1000]])}
    # score per MAC: ffn 0.1..0.8, heads 0.2, 9, 0.5, 10 -> removal order ffn0.0(0.1), ffn0.1, heads0.0(0.2), ffn0.2, ...
    s = PruneCfg(macs_ratio=0.5, max_layer_ratio=1.0, scope="uniform")
    kept = allocate_macs(tables, widths, costs, 125, s)
    assert kept == {"ffn": [1, 4], "heads": [1, 2]}  # 0.1, 0.2 (ffn), 0.2 (head, 100 MACs) -> 120, then 0.3 -> 130
    brute_force_check(tables, widths, costs, 125, s, kept)
    # a cap of half the heads per block, and a floor of a quarter of the neurons in every block
    s = PruneCfg(macs_ratio=0.5, max_layer_ratio={"ffn": 1.0, "heads": 0.5}, min_layer_ratio={"ffn": 0.25}, scope="uniform")
    kept = allocate_macs(tables, widths, costs, 250, s)  # 280 is the most the caps allow
    brute_force_check(tables, widths, costs, 250, s, kept)
    assert kept["ffn"][1] <= 3 and min(kept["heads"]) >= 1
    # random instances against the rules: enough MACs, caps and floors, and greedy order by score per cost
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        widths = {"ffn": [8, 8, 8], "heads": [3, 3, 3]}
        costs = {"ffn": [7, 7, 7], "heads": [50, 60, 70]}
        tables = {k: torch.rand(3, max(w), generator=g, dtype=torch.float64) for k, w in widths.items()}
        s = PruneCfg(macs_ratio=0.5, max_layer_ratio={"ffn": 0.9, "heads": 1.0}, min_layer_ratio=0.1, scope="uniform")
        target = int(torch.randint(1, max_removable_macs(widths, costs, s), (1,), generator=g))
        kept = allocate_macs(tables, widths, costs, target, s)
        brute_force_check(tables, widths, costs, target, s, kept)
    with pytest.raises(ConfigError, match="unreachable.*lower prune.macs_ratio"):
        allocate_macs(tables, widths, costs, 10**6, s)


def test_plan_keep_reaches_the_macs_target_on_a_model():
    model = vit()
    t = {"ffn": torch.rand(3, 64, dtype=torch.float64), "heads": torch.rand(3, 4, dtype=torch.float64)}
    s = PruneCfg(macs_ratio=0.4, max_layer_ratio=1.0, scope="uniform")
    keep = plan_keep(model, [FFN, HEADS], t, s, X[:1])
    _, dense = count_params_macs(model, X[:1])
    for u in (FFN, HEADS):
        prune_units(model, u, t[u.kind], s, X[:1], keep=keep[u.kind])
    _, after = count_params_macs(model, X[:1])
    assert 0.4 <= 1 - after / dense < 0.4 + HEADS.cost(vit(), 17)[0] / dense  # at most one unit past the target
    with pytest.raises(ConfigError, match="prune.macs_ratio 0.9 is unreachable"):
        check_budget(vit(), [FFN], PruneCfg(macs_ratio=0.9, max_layer_ratio=0.9, scope="uniform"), X[:1])


def test_one_pass_scores_equal_per_block_scores():
    model = vit()
    batches = lambda: [(X[:4], Y[:4]), (X[4:], Y[4:])]  # noqa: E731
    tables = first_order_tables(model, [FFN, HEADS], batches, 5, objective="logprob")
    for unit in (FFN, HEADS):
        from prune.gates import attribution_rows

        ref = torch.stack([attribution_rows(model, unit, batches, 5, steps=None, objective="logprob")(l) for l in range(3)])
        torch.testing.assert_close(tables[unit.kind], ref, rtol=1e-6, atol=1e-9)
    # and the first-order head score is the alpha = 1 gate gradient: a head's removal, to first order
    g = block_attribution(model, HEADS, 0, X[:2], Y[:2], steps=None)
    assert g.shape == (2, 4) and torch.isfinite(g).all()


def test_recovery_never_returns_worse_than_one_shot(tmp_path):
    """A learning rate that wrecks the model: keep_best hands back the starting weights; a sane one may improve."""
    from conftest import tiny_vit
    from prune.finetune import TrainConfig, recovery_summary, train
    from test_finetune import Toy

    model = tiny_vit(num_classes=2)
    train(model, Toy(128), None, TrainConfig(epochs=6, batch_size=16, lr=3e-3, warmup_epochs=1), progress=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wreck = TrainConfig(epochs=2, batch_size=16, lr=5.0, warmup_epochs=0, grad_clip=0, seed=0)
    history = train(model, Toy(128), Toy(64), wreck, checkpoint_dir=tmp_path / "ck", progress=False, keep_best=True)
    rec = recovery_summary(history)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert rec["best_epoch"] == 0 and rec["last"] < rec["oneshot"] == rec["best"]
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_heads_and_neurons_run_end_to_end(tmp_path, capsys):
    """A run that prunes both kinds to a MACs target: every stage carries the head counts, ONNX parity
    holds, the report names both kinds, recovery reports one-shot/best/last and never keeps worse weights;
    `prune export`, `prune bench` and `prune specialize` take the result."""
    from prune.cli import main
    from prune.export import ort_session

    sets = ["prune.units=[ffn,heads]", "prune.macs_ratio=0.55", "prune.max_layer_ratio=1.0",
            "importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=1",
            "finetune.train_images=128", "finetune.holdout=0.1", "bench.repeats=2", "bench.batch_sizes=[1]"]
    args = ["--recipe", "quickstart.yaml", "--out", str(tmp_path / "run"), "--quiet", *sum([["--set", s] for s in sets], [])]
    assert main(args) == 0, capsys.readouterr().err
    root = tmp_path / "run"
    s = json.loads((root / "summary.json").read_text())
    assert 0.55 <= 1 - s["macs"]["pruned"] / s["macs"]["dense"] < 0.55 + 0.016  # past the target by at most one head
    heads = s["widths"]["heads"]["pruned"]
    assert s["widths"]["heads"]["dense"] == [4] * 6 and heads != [4] * 6
    model, structure = load_pruned(root / "finetune")
    assert HEADS.widths(model) == heads and structure["units"]["heads"]["widths"] == heads
    assert all(v["max_abs_diff"] <= 1e-4 for k, v in s["onnx"]["pruned"]["parity"].items() if k.startswith("batch_"))
    rec = s["finetune"]["recovery"]
    assert rec["best"] >= rec["oneshot"] and rec["holdout_images"] == round(0.1 * 1437)
    report = (root / "report/report.md").read_text()
    assert "attention heads kept per block: " + ", ".join(map(str, heads)) in report and "one-shot" in report
    sess = ort_session(root / "export/pruned.onnx")
    assert sess.run(None, {sess.get_inputs()[0].name: torch.randn(2, 3, 8, 8).numpy()})[0].shape == (2, 10)
    capsys.readouterr()
    assert main(["export", str(root / "finetune"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["bench", str(root / "finetune"), "--repeats", "2", "--batch-sizes", "1"]) == 0
    assert main(["specialize", str(root), "--classes", "1,7", "--quiet", "--set", "finetune.epochs=0",
                 "--set", "bench.enabled=false", "--set", "export.enabled=false"]) == 0, capsys.readouterr().err
    spec = json.loads((root.parent / "run-classes-1-7" / "summary.json").read_text())
    assert spec["widths"]["heads"]["dense"] == [4] * 6 and spec["classes"] == [1, 7]
    assert spec["prune"]["units"] == ["ffn", "heads"] and 1 - spec["macs"]["pruned"] / spec["macs"]["dense"] >= 0.55


def test_the_macs_cost_model_is_the_units_cost_and_the_counters_dense_total():
    from prune.budget import MacsCost

    model = vit()
    cost = MacsCost(model, [FFN, HEADS], X[:1])
    T = tokens(model)
    assert cost.dense() == count_params_macs(model, X[:1])[1]
    for unit in (FFN, HEADS):
        per_unit = unit.cost(model, T)
        assert [cost.saving(unit.kind, l, w) for l, w in enumerate(unit.widths(model))] == per_unit
        assert cost.saving(unit.kind, 0, 1) == per_unit[0]  # a MAC saving does not depend on the width
