"""The neuron-path engine: joint attribution, layer-progressive locating, baselines, per-class stats."""

from .locate import METHODS, PathResult, edit_paths, locate_paths, path_score
from .stats import PathStats

__all__ = ["METHODS", "PathResult", "PathStats", "edit_paths", "locate_paths", "path_score"]
