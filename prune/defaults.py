"""Defaults written once, for the recipe schema (which must not import torch) and the library alike."""

MAX_LAYER_RATIO = 0.9  # the most of a block's units of a kind a global ranking may remove (1.0: every one)
MIN_LAYER_RATIO = 0.0  # the least of a block's units of a kind a cost target must remove
