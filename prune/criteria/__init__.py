"""Importance criteria: configured instances, registered by name.

Every criterion produces a table of scores `[L, width]` per unit kind (higher = keep). Tables are what
the importance stage saves and the prune stage ranks, so the pruner never depends on how a score was made. Adding a criterion is one small class and one line below.
"""

from __future__ import annotations

from ..errors import ConfigError
from .attribution import Attribution
from .base import Criterion, ImportanceContext, dependency_graph, tp_table, unwrapped
from .classic import ActivationStatistic, Magnitude, Random, Taylor
from .paths import PathCoverage, PathFrequency, PathJAS, PathTaylor, block_ranks, lexicographic_ranks

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
    Random(),
)}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ConfigError(f"unknown importance kind {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


__all__ = ["CRITERIA", "Attribution", "ActivationStatistic", "Criterion", "ImportanceContext", "Magnitude",
           "PathCoverage", "PathFrequency", "PathJAS", "PathTaylor", "Random", "Taylor",
           "block_ranks", "dependency_graph", "get_criterion", "lexicographic_ranks", "tp_table", "unwrapped"]
