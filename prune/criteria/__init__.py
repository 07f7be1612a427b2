"""Importance criteria: configured instances, registered by name.

Every criterion produces a table of scores `[L, width]` per unit kind (higher = keep). Tables are what
the importance stage saves and the prune stage ranks, so the pruner never depends on how a score was made. Adding a criterion is one small class and one line below.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..units import dependency_graph, unwrapped  # the graph helpers live with the units (surgery uses them too)
from .attribution import Attribution
from .base import BlockCriterion, Criterion, ImportanceContext, tp_table
from .classic import ActivationStatistic, Magnitude, Random, Taylor
from .paths import PathCoverage, PathFrequency, PathJAS, PathTaylor, block_ranks, lexicographic_ranks
from .refit import RefitError

_taylor = Taylor(normalizer="mean")
_path_frequency = PathFrequency()

CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    _path_frequency,
    PathJAS(),
    PathCoverage(),
    Magnitude("magnitude_l1", p=1),
    Magnitude("magnitude_l2", p=2),
    _taylor,
    Attribution(
        "path_attribution", integrated=True,
        formula=("integrated gradients of scaling all of block l's FFN channels (every token) from 0 to their value "
                 "(m steps) of the objective (default log p(label)) on the paths' class-balanced images; |score| "
                 "averaged within each class, classes summed. In nats of the objective, so blocks compare (prune.scope: "
                 "global); prune.mode: progressive scores each block with the earlier blocks already pruned (the "
                 "paper's layer-progressive locating)")),
    Attribution(
        "activation_taylor", integrated=False,
        formula=("|sum over tokens of a_l[d] x d objective / d a_l[d]| per calibration image (first-order Taylor of "
                 "the objective in the neuron's activation: the alpha = 1 end of path_attribution's integral), "
                 "averaged within each class, classes summed")),
    PathTaylor(taylor=_taylor, paths=_path_frequency),
    ActivationStatistic("activation_mean", "abs_mean", "mean |a_l[d]| over all tokens of the calibration images"),
    ActivationStatistic("activation_variance", "var",
                        "variance of a_l[d] over all tokens of the calibration images: a low-variance neuron is "
                        "nearly constant, which mean compensation folds into fc2's bias"),
    RefitError(),
    Random(),
)}


DEFAULT_BUDGET_KIND = "activation_taylor"  # in nats, scores every kind, one pass: what fills in for the others


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ConfigError(f"unknown importance kind {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


def scorers(kind: str, budget_kind: str | None, units: list[str], *, across_blocks: bool,
            one_budget: bool) -> tuple[Criterion, Criterion]:
    """The run's criterion and its budget criterion (the same object when one criterion does everything).

    The criterion chooses, within each block, which units of the kinds it can score go. The budget
    criterion scores the kinds it cannot (path criteria score FFN neurons only) and sets every block's
    width: ranking units `across_blocks` (`prune.scope: global`) needs values that compare across blocks
    (not ranks), and `one_budget` over several kinds (`prune.macs_ratio`) needs nats. When the criterion
    cannot do both and `prune.budget_kind` is not set, `DEFAULT_BUDGET_KIND` steps in; a budget criterion
    set by the user is used as given, and one that cannot score every kind, or not in nats where kinds
    share one budget, is a `ConfigError` naming the ones that can.
    """
    crit = get_criterion(kind)
    shared = one_budget and len(units) > 1
    if budget_kind is None:
        can_alone = (all(crit.can_score(u) for u in units) and (crit.scale == "nats" or not shared)
                     and (crit.scale != "rank" or not across_blocks))
        budget_kind = kind if can_alone else DEFAULT_BUDGET_KIND
    budget = get_criterion(budget_kind)
    missing = [u for u in units if not budget.can_score(u)]
    able = [n for n, c in CRITERIA.items()
            if all(c.can_score(u) for u in units) and (c.scale == "nats" or not shared)]
    if missing:
        raise ConfigError(f"prune.budget_kind {budget.name} cannot score {', '.join(missing)} (prune.units "
                          f"{units}); set prune.budget_kind to one of {', '.join(able)}")
    if shared and budget.scale != "nats":
        raise ConfigError(f"prune.budget_kind {budget.name} gives no nats, so prune.macs_ratio cannot rank "
                          f"{' against '.join(units)} with it; set prune.budget_kind to one of {', '.join(able)}")
    return crit, (crit if budget is crit else budget)


__all__ = ["CRITERIA", "DEFAULT_BUDGET_KIND", "Attribution", "ActivationStatistic", "BlockCriterion", "Criterion", "ImportanceContext", "Magnitude",
           "PathCoverage", "PathFrequency", "PathJAS", "PathTaylor", "Random", "RefitError", "Taylor",
           "block_ranks", "dependency_graph", "get_criterion", "lexicographic_ranks", "scorers", "tp_table", "unwrapped"]
