"""Kinds of prunable unit, each one file implementing `Unit` (base.py)."""

from ..errors import ConfigError
from .base import ConstantBranch, Unit, is_empty, stack_rows
from .ffn import FFNNeurons
from .graph import dependency_graph, unwrapped
from .head import AttentionHeads

FFN = FFNNeurons()
HEADS = AttentionHeads()
UNITS: dict[str, Unit] = {u.kind: u for u in (FFN, HEADS)}


def get_unit(kind: str) -> Unit:
    if kind not in UNITS:
        raise ConfigError(f"unknown unit kind {kind!r}; choose one of {', '.join(UNITS)}")
    return UNITS[kind]


__all__ = ["FFN", "HEADS", "UNITS", "ConstantBranch", "Unit", "dependency_graph", "get_unit", "is_empty", "stack_rows",
           "unwrapped"]
