"""Kinds of prunable unit, each one file implementing `Unit` (base.py)."""

from ..errors import ConfigError
from .base import Unit
from .ffn import FFNNeurons

FFN = FFNNeurons()
UNITS: dict[str, Unit] = {u.kind: u for u in (FFN,)}


def get_unit(kind: str) -> Unit:
    if kind not in UNITS:
        raise ConfigError(f"unknown unit kind {kind!r}; choose one of {', '.join(UNITS)}")
    return UNITS[kind]


__all__ = ["FFN", "UNITS", "Unit", "get_unit"]
