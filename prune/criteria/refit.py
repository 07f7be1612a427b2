"""`refit_error`: choose the units whose loss a least-squares re-fit of the branch's output layer can
best make up for (Optimal Brain Surgeon, greedy, on groups of input columns).

A branch's output is `W a + b`, `a` the output layer's input (an FFN's hidden activations, the
attention's per-head outputs; a head is `head_dim` columns). Removing a set S of columns and
re-solving `W, b` on the rest by least squares over the calibration tokens leaves a squared error
that the inverse Gram matrix of `[a, 1]` gives in closed form: removing group S from the current
solution costs `trace(W_S (Ginv_SS)^-1 W_S^T)`, and the solution and `Ginv` then update by a rank-|S|
step (the OBS update). Removing the cheapest group, one at a time, orders every unit of a block; its
score is the step at which it would go (higher = keep). Values are ranks within a block, so the
budget criterion (`activation_taylor`, in nats) sets each block's width and this one chooses which
units fill it: the ones the `prune.reconstruct: lstsq` re-fit can replace best.
"""

from __future__ import annotations

import torch

from ..units import stack_rows
from .base import Criterion


def _gram(ctx, unit, blocks: list[int]) -> dict[int, torch.Tensor]:
    """`[a, 1]^T [a, 1]` (float64) of each block's output-layer input over the calibration tokens."""
    model = ctx.model
    grams: dict[int, torch.Tensor] = {}
    hooks = []

    def hook(l):
        def f(_module, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
            grams[l] = grams.get(l, 0) + a.T @ a
        return f

    for l in blocks:
        hooks.append(unit.out_layer(model, l).register_forward_pre_hook(hook(l)))
    try:
        with torch.no_grad():
            for batch in ctx.calibration():
                model(batch[0])
    finally:
        for h in hooks:
            h.remove()
    return {l: ctx.reduce(g) for l, g in grams.items()}


def removal_order(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, channels: int,
                  ridge: float = 1e-3) -> tuple[list[int], list[float]]:
    """Greedy OBS over groups of `channels` input columns of a linear layer (`weight` `[out, groups * channels]`,
    `gram` `[in + 1, in + 1]` of `[a, 1]`): the groups in the order they are removed, and the squared error
    (summed over the calibration tokens and outputs) each removal adds once the rest is re-fitted."""
    n = weight.shape[1]
    g = gram.double().clone()
    lam = ridge * g.diagonal()[:n].mean().clamp_min(1e-12)
    g[range(n), range(n)] += lam
    ginv = torch.linalg.inv(g)
    w = torch.cat([weight.detach().double(), (bias.detach().double() if bias is not None
                                             else weight.new_zeros(weight.shape[0]).double())[:, None]], 1)
    if channels == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # hundreds of small rank-1 steps: extra threads only wait on each other
        try:
            return _removal_order_columns(w, ginv, n)
        finally:
            torch.set_num_threads(threads)
    alive = list(range(n // channels))
    order, costs = [], []
    while alive:
        cost, j = min((float(torch.trace(w[:, _cols(u, channels)] @ torch.linalg.solve(
            ginv[_cols(u, channels)][:, _cols(u, channels)], w[:, _cols(u, channels)].T))), u) for u in alive)
        s = _cols(j, channels)
        m = torch.linalg.inv(ginv[s][:, s])
        w -= w[:, s] @ m @ ginv[s, :]
        ginv -= ginv[:, s] @ m @ ginv[s, :]
        ginv[s, :] = 0
        ginv[:, s] = 0
        w[:, s] = 0
        order.append(j)
        costs.append(cost)
        alive.remove(j)
    return order, costs


def _removal_order_columns(w: torch.Tensor, ginv: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    """`removal_order` for single columns (FFN neurons): rank-1 updates in place, no copies."""
    gone = torch.zeros(n, dtype=torch.bool)
    order, costs = [], []
    for _ in range(n):
        c = (w[:, :n] ** 2).sum(0) / ginv.diagonal()[:n].clamp_min(1e-30)
        c[gone] = float("inf")
        j = int(c.argmin())
        order.append(j)
        costs.append(float(c[j]))
        d = ginv[:, j].clone() / ginv[j, j]
        w.addr_(w[:, j].clone(), d, alpha=-1.0)
        ginv.addr_(ginv[:, j].clone(), d, alpha=-1.0)
        gone[j] = True
        w[:, j] = 0
        ginv[j, :] = 0
        ginv[:, j] = 0
    return order, costs


def _cols(group: int, channels: int) -> list[int]:
    return list(range(group * channels, (group + 1) * channels))


class RefitError(Criterion):
    """Units ranked by what the least-squares re-fit cannot make up for when they go (module docstring)."""

    name = "refit_error"
    scale = "rank"
    formula = ("greedy Optimal Brain Surgeon on each block's output layers (the attention projection, the FFN's "
               "second linear layer): remove the unit whose input columns cost the least squared output error after re-fitting the layer by least squares on the "
               "calibration tokens, update, repeat; a unit's score is the step at which it goes (ranks within a block: "
               "widths come from the budget criterion). Made to choose what prune.reconstruct: lstsq re-fits")

    def __init__(self, ridge: float = 1e-3):
        self.ridge = ridge

    def scores(self, ctx, unit):
        model = ctx.model
        widths = unit.widths(model)
        live = [l for l, w in enumerate(widths) if w > 0]  # an emptied branch has nothing left to choose
        grams = _gram(ctx, unit, live)
        rows = []
        for l, width in enumerate(widths):
            score = torch.zeros(width, dtype=torch.float64)
            if width:
                layer = unit.out_layer(model, l)
                bias = None if layer.bias is None else layer.bias.cpu()
                order, _ = removal_order(layer.weight.cpu(), bias, grams[l].cpu(), unit.channels(model, l), self.ridge)
                score[torch.tensor(order)] = torch.arange(1, width + 1, dtype=torch.float64)
            rows.append(score)
        return stack_rows(rows)
