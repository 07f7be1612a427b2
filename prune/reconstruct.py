"""Re-fit what is left after a cut: every branch's output layer (`Unit.out_layer`: the attention's
projection, the FFN's second linear layer; an emptied branch's constant) re-solved by ridge least
squares, block by block from input to output, so that the pruned model's residual stream matches the
dense model's at every depth.

Block l is fitted on the pruned model's own inputs (the stream after the already re-fitted blocks <
l), so each block also corrects what earlier cuts left behind: the structured, ViT form of
sequential layer-wise reconstruction. The attention branch is fitted so that the stream after it
matches the dense one after attention; then the FFN branch, on the re-fitted attention's output, so
that the block's output matches. Normal equations are accumulated in float64 over every token of
the calibration images (summed across processes with `reduce`), and a solution is kept only when it
lowers that branch's squared error on them: the re-fit is never worse than no re-fit on its own
objective.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .models import ViTAdapter
from .units import FFN, HEADS, is_empty


def _scale(ls: nn.Module) -> torch.Tensor | None:
    """The per-channel factor a LayerScale applies after the branch (None: the identity)."""
    return ls.gamma.detach().double() if hasattr(ls, "gamma") else None


class NormalEquations:
    """`[X, 1]^T [X, 1]` and `[X, 1]^T T` over many rows, in float64."""

    def __init__(self, features: int, outputs: int, device):
        self.g = torch.zeros(features + 1, features + 1, dtype=torch.float64, device=device)
        self.r = torch.zeros(features + 1, outputs, dtype=torch.float64, device=device)
        self.tt = torch.zeros((), dtype=torch.float64, device=device)  # the targets' sum of squares

    def add(self, x: torch.Tensor, target: torch.Tensor) -> None:
        rows = target.shape[:-1].numel()
        x = x.reshape(rows, x.shape[-1]).double()  # explicit rows: an emptied branch has 0 features
        x = torch.cat([x, x.new_ones(rows, 1)], 1)
        self.g += x.T @ x
        target = target.reshape(rows, target.shape[-1]).double()
        self.r += x.T @ target
        self.tt += target.pow(2).sum()

    def reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.g, self.r, self.tt = reduce(self.g), reduce(self.r), reduce(self.tt)

    def error(self, w: torch.Tensor) -> float:
        """Squared error of `[X, 1] w` against the targets, as a share of the targets' sum of squares."""
        sse = self.tt + (w * (self.g @ w)).sum() - 2 * (w * self.r).sum()
        return float(sse.clamp_min(0) / self.tt.clamp_min(1e-30))

    def solve(self, ridge: float) -> torch.Tensor:
        """Ridge solution `[features + 1, outputs]`; the ridge is relative to the features' mean square, and the
        bias row is not shrunk."""
        n = self.g.shape[0] - 1
        lam = ridge * (self.g.diagonal()[:n].mean().clamp_min(1e-12) if n else 0.0)
        eye = torch.eye(n + 1, dtype=torch.float64, device=self.g.device)
        eye[n, n] = 0
        return torch.linalg.lstsq(self.g + lam * eye, self.r).solution


def _fit_layer(eq: NormalEquations, layer: nn.Linear | None, const: nn.Module | None, gamma, ridge: float,
               reduce) -> dict:
    """Solve and write the new weights into `layer` (or the constant branch `const`) when they lower the error."""
    eq.reduce(reduce)
    if layer is not None:
        old = torch.cat([layer.weight.detach().double().T,
                         (layer.bias.detach().double() if layer.bias is not None else
                          torch.zeros(layer.out_features, dtype=torch.float64, device=layer.weight.device))[None]])
        if layer.bias is None:  # no bias to re-fit: solve without the ones column
            eq.g[-1, :] = 0
            eq.g[:, -1] = 0
            eq.g[-1, -1] = 1
            eq.r[-1] = 0
    else:
        old = const.bias.detach().double()[None]
    new = eq.solve(ridge)
    before, after = eq.error(old), eq.error(new)
    if after < before:
        with torch.no_grad():
            if layer is not None:
                layer.weight.copy_(new[:-1].T.to(layer.weight.dtype))
                if layer.bias is not None:
                    layer.bias.copy_(new[-1].to(layer.bias.dtype))
            else:
                const.bias.copy_(new[-1].to(const.bias.dtype))
    return {"error_before": before, "error_after": min(before, after), "kept_old": after >= before}


def _fit_branch(unit, vit: ViTAdapter, l: int, branch: nn.Module, ls: nn.Module, inputs: list[torch.Tensor],
                targets: list[torch.Tensor], ridge: float, reduce) -> dict:
    """Re-fit block l's branch of `unit`s so that each stream in `inputs` plus the branch's output (after its
    LayerScale `ls`) matches the dense stream in `targets`: the output layer, or an emptied branch's constant."""
    empty, gamma = is_empty(branch), _scale(ls)
    layer = None if empty else unit.out_layer(vit.model, l)
    eq = NormalEquations(0 if empty else layer.in_features, vit.model.embed_dim,
                         next(vit.model.parameters()).device)
    for x, want in zip(inputs, targets):
        target = want - x
        target = target.double() / gamma if gamma is not None else target
        eq.add(x.new_zeros(*x.shape[:-1], 0) if empty else unit.out_input(vit, l, x), target)
    return _fit_layer(eq, layer, branch if empty else None, gamma, ridge, reduce)


@torch.no_grad()
def refit(pruned: nn.Module, dense: nn.Module, batches: Iterable, *, ridge: float = 1e-3,
          reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, progress: bool = False) -> list[dict]:
    """Re-fit `pruned` in place on the images of `batches` (`(images, ...)`); one row per block and branch
    with its squared error before and after, as a share of what the branch should add to the stream."""
    pruned.eval()
    dense.eval()
    pv, dv = ViTAdapter(pruned), ViTAdapter(dense)
    images = [b[0] for b in batches if len(b[0])]
    streams = [(dv.embed(x), pv.embed(x)) for x in images]  # (dense, pruned) residual streams, per batch
    rows = []
    for l in tqdm(range(pv.depth), desc="reconstruct", unit="block", disable=not progress):
        pb, db = pv.blocks[l], dv.blocks[l]
        dense_mid = [xd + db.ls1(db.attn(db.norm1(xd))) for xd, _ in streams]
        dense_out = [dv.post(l, *dv.pre_mlp(l, m)) for m in dense_mid]
        # attention branch: the stream after it should be the dense stream after attention
        rows.append({"block": l, "branch": "attn", **_fit_branch(
            HEADS, pv, l, pb.attn, pb.ls1, [xp for _, xp in streams], dense_mid, ridge, reduce)})
        mids = [xp + pb.ls1(pb.attn(pb.norm1(xp))) for _, xp in streams]
        # FFN branch: on the re-fitted attention's output, the block's output should be the dense one
        rows.append({"block": l, "branch": "ffn", **_fit_branch(FFN, pv, l, pb.mlp, pb.ls2, mids, dense_out, ridge,
                                                                reduce)})
        streams = [(out, pv.post(l, *pv.pre_mlp(l, mp))) for out, mp in zip(dense_out, mids)]
    return rows
