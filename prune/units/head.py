"""Attention heads: head h of block l's multi-head self-attention (timm's `Attention`).

Removing head h deletes its `head_dim` rows in each of q, k and v (`qkv`'s output) and its `head_dim`
input columns of `proj`; the other heads are unchanged, and so is `scale` (head_dim stays), so the
pruned block computes exactly what the dense one computes with that head's output at zero. The gate
is the attention's output before `proj` (`attn.norm`, the identity in a plain ViT), `[B, T, heads *
head_dim]`, one gate per head broadcast over its channels. Torch-Pruning removes a head as the group
rooted at `qkv`'s output channels of that head in q, k and v (its graph couples v's to `proj`'s inputs,
as in its `num_heads` / `prune_num_heads` mode). A block whose heads are all removed keeps only
`proj`'s bias (`ConstantBranch`), and its `norm1` becomes the identity.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from ..errors import UnsupportedModelError
from .base import ConstantBranch, Unit, fold_into_bias, is_empty


def _attn(model: nn.Module, block: int) -> nn.Module:
    attn = model.blocks[block].attn
    for name in ("qkv", "proj", "num_heads", "head_dim"):
        if not hasattr(attn, name):
            raise UnsupportedModelError(f"block {block}: attention {type(attn).__name__} has no {name}; head "
                                        "pruning supports timm's Attention (qkv -> heads -> proj)")
    if getattr(attn, "gate", None) is not None or not isinstance(getattr(attn, "norm", None), nn.Identity):
        raise UnsupportedModelError(f"block {block}: gated or scale-normed attention is not supported by head pruning")
    return attn


class AttentionHeads(Unit):
    kind = "heads"

    def widths(self, model):
        return [0 if is_empty(b.attn) else int(_attn(model, l).num_heads) for l, b in enumerate(model.blocks)]

    def channels(self, model, block):
        return int(_attn(model, block).head_dim)

    def cost(self, model, tokens):
        """Per head and image: q, k, v rows and proj columns at every token (4 x dim x head_dim), plus
        the attention matmuls q k^T and attn v (2 x tokens x head_dim per token)."""
        out = []
        for l, b in enumerate(model.blocks):
            if is_empty(b.attn):
                out.append(0)
                continue
            a = _attn(model, l)
            out.append(tokens * a.head_dim * (3 * a.qkv.in_features + a.proj.out_features + 2 * tokens))
        return out

    def gate(self, model, block):
        return _attn(model, block).norm

    def split(self, vit, block, x):
        b = vit.blocks[block]
        a = b.attn
        y = b.norm1(x)
        B, N, _ = y.shape
        qkv = a.qkv(y).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        h = nn.functional.scaled_dot_product_attention(q, k, v, scale=a.scale)
        return x, h.transpose(1, 2).reshape(B, N, a.num_heads * a.head_dim)

    def join(self, vit, block, rest, h):
        b = vit.blocks[block]
        x = rest + b.drop_path1(b.ls1(b.attn.proj_drop(b.attn.proj(h))))
        return vit.post(block, *vit.pre_mlp(block, x))

    def out_layer(self, model, block):
        return _attn(model, block).proj

    def out_input(self, vit, block, x):
        return _attn(vit.model, block).norm(self.split(vit, block, x)[1])

    def parameters(self, model, block):
        a = _attn(model, block)
        return list(a.qkv.parameters()) + list(a.proj.parameters())

    def root(self, model, block):
        return _attn(model, block).qkv, tp.prune_linear_out_channels

    def group(self, graph, model, block, idxs):
        a = _attn(model, block)
        dim, hd = a.num_heads * a.head_dim, a.head_dim
        channels = [s * dim + h * hd + j for s in range(3) for h in sorted(idxs) for j in range(hd)]
        return graph.get_pruning_group(a.qkv, tp.prune_linear_out_channels, idxs=channels)

    def per_unit(self, model, block, scores):
        a = _attn(model, block)  # root channels: q, k, v of every head -> the mean over a head's 3 x head_dim
        return scores.reshape(3, a.num_heads, a.head_dim).mean((0, 2))

    def after_prune(self, model, block, kept: int) -> None:
        """Torch-Pruning shrank qkv and proj; the module's head count follows (scale stays: head_dim is unchanged)."""
        a = _attn(model, block)
        a.num_heads = kept
        a.attn_dim = kept * a.head_dim

    def compensate(self, model, block, removed, mean):
        hd = _attn(model, block).head_dim  # a head's channels at proj's input
        fold_into_bias(_attn(model, block).proj, [h * hd + j for h in removed for j in range(hd)], mean,
                       f"block {block}: attn.proj")

    def empty(self, model, block):
        b = model.blocks[block]
        proj = b.attn.proj
        b.attn = ConstantBranch(proj.out_features, proj.bias)
        b.norm1 = nn.Identity()

    def resize(self, model, widths):
        for l, (b, heads) in enumerate(zip(model.blocks, widths)):
            if heads == 0:
                if not is_empty(b.attn):  # a model built from a pruned one may have it empty already
                    self.empty(model, l)
                continue
            a = _attn(model, l)
            qkv, proj = a.qkv, a.proj
            a.qkv = nn.Linear(qkv.in_features, 3 * heads * a.head_dim, bias=qkv.bias is not None)
            a.proj = nn.Linear(heads * a.head_dim, proj.out_features, bias=proj.bias is not None)
            self.after_prune(model, l, heads)
