"""Every registered criterion with every combination of unit kinds: a clean refusal before any work, or
a pruned model within reach of the default criterion's accuracy (issue 23: the path criteria used to
hand their FFN table back for heads and empty every attention branch)."""

import json

import pytest

from prune.cli import main
from prune.criteria import CRITERIA, DEFAULT_BUDGET_KIND, scorers
from prune.errors import ConfigError
from prune.recipe import load_recipe

COMBOS = {"ffn": "[ffn]", "heads": "[heads]", "both": "[ffn,heads]"}
FAST = ["paths.images_per_class=4", "paths.steps=4", "importance.calibration_images=64", "data.eval_images=180",
        "finetune.epochs=0", "export.enabled=false", "bench.enabled=false", "prune.macs_ratio=0.3",
        "prune.max_layer_ratio=0.9"]  # the default caps, under which heads alone cannot give 0.3 of the MACs


def sets(*pairs):
    return sum([["--set", s] for s in (*FAST, *pairs)], [])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """One run directory for all: stages that do not depend on the criterion (paths, baseline) are reused."""
    root = tmp_path_factory.mktemp("criteria") / "run"
    got = {}
    for kind in CRITERIA:
        for name, units in COMBOS.items():
            argv = ["--recipe", "quickstart.yaml", "--out", str(root), "--quiet", "--update",
                    *sets(f"importance.kind={kind}", f"prune.units={units}")]
            code = main(argv)
            summary = json.loads((root / "summary.json").read_text()) if code == 0 else None
            imp = json.loads((root / "importance" / "importance.json").read_text()) if code == 0 else None
            got[kind, name] = (code, summary, imp)
    return got


def test_every_criterion_and_unit_combination_runs_or_refuses_and_keeps_accuracy(outcomes):
    dense = next(s for c, s, _ in outcomes.values() if c == 0)["accuracy"]["dense"]["top1"]
    assert all(outcomes[k, "heads"][0] == 2 for k in CRITERIA)  # 0.3 of the MACs is more than heads can give
    for (kind, combo), (code, summary, imp) in outcomes.items():
        assert code in (0, 2), (kind, combo, code)
        assert code == 0 or combo == "heads", (kind, combo)
        if code == 0 and kind != "random":
            top1 = summary["accuracy"]["pruned"]["top1"]
            assert top1 >= 0.9 * dense, (kind, combo, top1, dense)
            assert summary["macs"]["pruned"] <= 0.7 * summary["macs"]["dense"] + 1, (kind, combo)


def test_path_criteria_choose_neurons_while_an_attribution_criterion_scores_heads(outcomes):
    for kind in ("path_frequency", "path_jas", "path_coverage", "path_taylor"):
        code, summary, imp = outcomes[kind, "both"]
        assert code == 0, kind
        assert imp["scored_by"] == {"ffn": kind, "heads": DEFAULT_BUDGET_KIND}
        assert imp["budget_kind"] == DEFAULT_BUDGET_KIND  # the widths are ranked in nats
        assert sum(summary["widths"]["heads"]["pruned"]) > 0  # not every head of every block removed
    code, _, imp = outcomes["path_jas", "ffn"]  # FFN-only too: ranks choose neurons, nats set the widths
    assert code == 0 and imp["scored_by"] == {"ffn": "path_jas"} and imp["budget_kind"] == DEFAULT_BUDGET_KIND


def test_scorers_refuse_a_budget_criterion_that_cannot_do_the_job():
    with pytest.raises(ConfigError, match="cannot score heads"):
        scorers("path_frequency", "path_jas", ["ffn", "heads"], across_blocks=True, one_budget=False)
    with pytest.raises(ConfigError, match="gives no nats"):
        scorers("taylor", "magnitude_l1", ["ffn", "heads"], across_blocks=True, one_budget=True)
    crit, budget = scorers("magnitude_l1", None, ["ffn", "heads"], across_blocks=True, one_budget=True)
    assert crit.name == "magnitude_l1" and budget.name == DEFAULT_BUDGET_KIND
    crit, budget = scorers("activation_taylor", None, ["ffn", "heads"], across_blocks=True, one_budget=True)
    assert crit is budget


def test_recipe_with_an_unusable_budget_criterion_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["--recipe", "quickstart.yaml", "--out", str(out), "--quiet", "--set", "importance.kind=path_jas",
                 "--set", "prune.units=[ffn,heads]", "--set", "prune.budget_kind=path_frequency"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot score heads" in err[0] and "activation_taylor" in err[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="prune.budget_kind path_jas cannot score heads"):
        load_recipe("quickstart.yaml", ["importance.kind=path_jas", "prune.units=[heads]", "prune.budget_kind=path_jas"])
