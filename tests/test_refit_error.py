"""`refit_error` (greedy OBS on a branch's output layer) against brute-force least squares: each removal's
cost is the error a re-fit on the survivors leaves, exactly, and the greedy step takes the cheapest."""

import itertools

import pytest
import torch

from prune.criteria.refit import removal_order


def case(n_in=6, n_out=4, rows=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, n_in, generator=g, dtype=torch.float64)
    a[:, 1] = 0.9 * a[:, 0] + 0.1 * a[:, 2] + 0.01 * a[:, 1]  # a column the others nearly explain: cheap to remove
    w, b = torch.randn(n_out, n_in, generator=g, dtype=torch.float64), torch.randn(n_out, generator=g, dtype=torch.float64)
    ones = torch.cat([a, torch.ones(rows, 1, dtype=torch.float64)], 1)
    return a, w, b, ones.T @ ones


def refit_sse(a, w, b, keep_cols):
    """Brute force: least squares of the dense output `a W^T + b` on the kept columns and a bias."""
    target = a @ w.T + b
    x = torch.cat([a[:, keep_cols], torch.ones(a.shape[0], 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(x, target).solution
    return float(((x @ sol - target) ** 2).sum())


@pytest.mark.parametrize("channels", [1, 2])
def test_each_removal_costs_exactly_what_a_refit_on_the_survivors_leaves(channels):
    a, w, b, gram = case()
    order, costs = removal_order(w, b, gram, channels, ridge=0.0)
    groups = a.shape[1] // channels
    assert sorted(order) == list(range(groups))
    gone = []
    for j, cost in zip(order[:-1], costs[:-1]):
        before = refit_sse(a, w, b, [c for g in range(groups) if g not in gone for c in range(g * channels, (g + 1) * channels)])
        gone.append(j)
        after = refit_sse(a, w, b, [c for g in range(groups) if g not in gone for c in range(g * channels, (g + 1) * channels)])
        assert cost == pytest.approx(after - before, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 2])
def test_the_greedy_step_takes_the_cheapest_group_and_the_near_duplicate_goes_first(channels):
    a, w, b, gram = case()
    order, costs = removal_order(w, b, gram, channels, ridge=0.0)
    groups = a.shape[1] // channels
    cols = lambda gs: [c for g in gs for c in range(g * channels, (g + 1) * channels)]  # noqa: E731
    first = {j: refit_sse(a, w, b, cols([g for g in range(groups) if g != j])) for j in range(groups)}
    assert order[0] == min(first, key=first.get)
    if channels == 1:
        assert order[0] == 1  # column 1 is nearly 0.9 x column 0 + 0.1 x column 2: a re-fit replaces it almost exactly


def test_greedy_is_optimal_where_brute_force_can_check_one_removal_and_close_after_three():
    a, w, b, gram = case(n_in=7, seed=3)
    order, costs = removal_order(w, b, gram, 1, ridge=0.0)
    best3 = min(refit_sse(a, w, b, [c for c in range(7) if c not in s]) for s in itertools.combinations(range(7), 3))
    greedy3 = refit_sse(a, w, b, [c for c in range(7) if c not in order[:3]])
    assert greedy3 == pytest.approx(sum(costs[:3]), rel=1e-6)
    assert best3 <= greedy3 + 1e-9 and greedy3 <= 3 * best3 + 1e-6  # greedy: not worse than the best by much here


def test_the_criterion_ranks_within_blocks_and_a_recipe_prunes_with_it(tmp_path):
    import json

    from prune.cli import main

    sets = ["importance.kind=refit_error", "importance.calibration_images=64", "data.eval_images=180",
            "finetune.epochs=0", "export.enabled=false", "bench.enabled=false", "prune.units=[ffn,heads]",
            "prune.macs_ratio=0.3", "prune.reconstruct=lstsq", "prune.reconstruct_images=64"]
    out = tmp_path / "run"
    assert main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", *sum([["--set", s] for s in sets], [])]) == 0
    imp = json.loads((out / "importance" / "importance.json").read_text())
    assert imp["scored_by"] == {"ffn": "refit_error", "heads": "refit_error"} and imp["budget_kind"] == "activation_taylor"
    from safetensors.torch import load_file

    tables = load_file(str(out / "importance" / "importance.safetensors"))
    for kind, width in (("ffn", 256), ("heads", 4)):  # a permutation of 1..width in each block: ranks
        for row in tables[f"{kind}.scores"]:
            assert sorted(row.tolist()) == list(range(1, width + 1))
    s = json.loads((out / "summary.json").read_text())
    assert s["accuracy"]["refitted"]["top1"] >= 0.9 * s["accuracy"]["dense"]["top1"]
