"""prune: neuron-path discovery and path-driven structural pruning for Vision Transformers."""

__version__ = "0.1.0"
