"""Iterative pruning (`prune/schedule.py`): one step is one-shot; more steps re-score the cut model, never
bring a removed unit back, and the prune stage cuts exactly what the last step kept."""

import json

import torch
from conftest import trained_tiny_vit

from prune.budget import kept_indices
from prune.recipe import PruneCfg
from prune.cli import main
from prune.budget import plan_keep
from prune.schedule import iterative_tables
from prune.units import FFN, HEADS, is_empty, stack_rows

EXAMPLE = torch.zeros(1, 3, 16, 16)


def norms(model):
    """A score computed on the model it is given: fc1 row norms, and each head's qkv rows' norm."""
    ffn = stack_rows([torch.zeros(0) if is_empty(b.mlp) else b.mlp.fc1.weight.detach().norm(dim=1).double()
                      for b in model.blocks])
    heads = []
    for b in model.blocks:
        if is_empty(b.attn):
            heads.append(torch.zeros(0, dtype=torch.float64))
            continue
        w = b.attn.qkv.weight.detach().reshape(3, b.attn.num_heads, -1).transpose(0, 1).reshape(b.attn.num_heads, -1)
        heads.append(w.norm(dim=1).double())
    return {"ffn": ffn, "heads": stack_rows(heads)}


def test_one_step_is_one_shot():
    dense = trained_tiny_vit()
    settings = PruneCfg(ratio=0.5, scope="global", max_layer_ratio=1.0, macs_ratio=0.4)
    tables, keep = iterative_tables(dense, [FFN, HEADS], norms, None, settings, 1, EXAMPLE, log=lambda m: None)
    want = plan_keep(dense, [FFN, HEADS], norms(dense), settings, EXAMPLE)
    assert keep == want
    for kind in ("ffn", "heads"):
        for l, k in enumerate(keep[kind]):
            assert sorted(kept_indices(tables[kind][l], k)) == sorted(kept_indices(norms(dense)[kind][l], k))


def test_more_steps_rescore_the_cut_model_and_never_restore_a_unit():
    dense = trained_tiny_vit()
    settings = PruneCfg(ratio=0.5, scope="global", max_layer_ratio=1.0, macs_ratio=0.4)
    seen, logged = [], []

    def score(model):
        seen.append(sum(FFN.widths(model)) + sum(HEADS.widths(model)))
        return norms(model)

    tables, keep = iterative_tables(dense, [FFN, HEADS], score, None, settings, 3, EXAMPLE, log=logged.append)
    assert len(seen) == 3 and seen[2] < seen[1] < seen[0] == sum(FFN.widths(dense)) + sum(HEADS.widths(dense))
    assert len(logged) == 3
    for kind in ("ffn", "heads"):  # removed units sit below every survivor, earlier removals lower
        for l, k in enumerate(keep[kind]):
            row = tables[kind][l][: (FFN if kind == "ffn" else HEADS).widths(dense)[l]]
            survivors = row[row >= 0]
            assert len(survivors) == k
            assert (row < 0).sum() == len(row) - k
            assert set(row[row < 0].tolist()) <= {-1.0, -2.0, -3.0}


def test_iterative_recipe_cuts_what_the_last_step_kept_and_meets_the_target(tmp_path):
    sets = ["importance.calibration_images=64", "data.eval_images=120", "finetune.epochs=0", "export.enabled=false",
            "bench.enabled=false", "prune.units=[ffn,heads]", "prune.macs_ratio=0.5", "prune.max_layer_ratio=1.0",
            "prune.mode=iterative", "prune.iterations=2", "prune.reconstruct=lstsq", "prune.reconstruct_images=64"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    imp = json.loads((out / "importance/importance.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary["widths"][k]["pruned"] for k in ("ffn", "heads")} == imp["keep"]
    assert summary["macs"]["pruned"] <= 0.5 * summary["macs"]["dense"] + 1
    assert summary["accuracy"]["refitted"]["top1"] > 0.8


def test_a_model_with_emptied_branches_can_be_scored_again():
    """Iterative steps score models that earlier steps cut, emptied branches included."""
    from prune.criteria import CRITERIA, ImportanceContext

    model = trained_tiny_vit()
    HEADS.empty(model, 1)
    FFN.empty(model, 2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    ctx = ImportanceContext(model, None, lambda: [(x, y)], None, EXAMPLE)
    tables = CRITERIA["activation_taylor"].tables(ctx, [FFN, HEADS])
    assert tables["heads"][1].abs().sum() == 0 and tables["ffn"][2].abs().sum() == 0
    assert tables["heads"][0].abs().sum() > 0 and tables["ffn"][3].abs().sum() > 0
