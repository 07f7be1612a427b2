"""FFN neurons: channel d of block l's `fc1 -> act -> fc2` (timm's `Mlp`).

Removing neuron d deletes fc1's output row d and fc2's input column d; its activation `act(fc1(x))[..., d]`
is where a gate multiplies it. A block whose neurons are all removed keeps only fc2's bias
(`ConstantBranch`), and its `norm2`, whose output nothing reads then, becomes the identity.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from .base import ConstantBranch, Unit, fold_into_bias, is_empty


class FFNNeurons(Unit):
    kind = "ffn"

    def widths(self, model):
        return [0 if is_empty(b.mlp) else b.mlp.fc1.out_features for b in model.blocks]

    def cost(self, model, tokens):
        # fc1 row (in_features MACs) + fc2 column (out_features MACs), at every token
        return [0 if is_empty(b.mlp) else tokens * (b.mlp.fc1.in_features + b.mlp.fc2.out_features)
                for b in model.blocks]

    def gate(self, model, block):
        return model.blocks[block].mlp.act

    def split(self, vit, block, x):
        return vit.pre(block, x)

    def join(self, vit, block, rest, h):
        return vit.post(block, rest, h)

    def out_layer(self, model, block):
        return model.blocks[block].mlp.fc2

    def out_input(self, vit, block, x):
        return vit.blocks[block].mlp.norm(vit.pre_mlp(block, x)[1])

    def parameters(self, model, block):
        return list(model.blocks[block].mlp.parameters())

    def root(self, model, block):
        return model.blocks[block].mlp.fc1, tp.prune_linear_out_channels

    def compensate(self, model, block, removed, mean):
        fold_into_bias(model.blocks[block].mlp.fc2, removed, mean, f"block {block}: fc2")

    def empty(self, model, block):
        b = model.blocks[block]
        fc2 = b.mlp.fc2
        b.mlp = ConstantBranch(fc2.out_features, fc2.bias)
        b.norm2 = nn.Identity()

    def resize(self, model, widths):
        for l, (block, width) in enumerate(zip(model.blocks, widths)):
            if width == 0:
                if not is_empty(block.mlp):  # a model built from a pruned one may have it empty already
                    self.empty(model, l)
                continue
            fc1, fc2 = block.mlp.fc1, block.mlp.fc2
            block.mlp.fc1 = nn.Linear(fc1.in_features, width, bias=fc1.bias is not None)
            block.mlp.fc2 = nn.Linear(width, fc2.out_features, bias=fc2.bias is not None)
