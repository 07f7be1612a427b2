"""What happens at a unit's gate: masks, activation statistics, and attribution by gated
forward/backward passes, for any kind of unit (`prune.units`).

A gate is a `[width]` factor on a block's units (`Unit.gate`): 1 leaves the model as it is, 0
removes the units, which is exactly what cutting them structurally does to the forward pass.
Attribution is the gradient of an objective (log p(label) by default) with respect to that gate:
at alpha = 1 the first-order Taylor term of removing each unit, integrated over alpha in [0, 1)
the integrated gradient, which sums to F(block intact) - F(block's units removed). Scores are in
nats of the objective for every kind of unit, so blocks and kinds compare.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import ConfigError
from .models import ViTAdapter
from .paths.attribution import acc, frozen
from .units import Unit, stack_rows


@contextlib.contextmanager
def unit_masks(model: nn.Module, unit: Unit, masks: list[torch.Tensor | None]):
    """Multiply each block's units by `masks[l]` (`[width]` of 0/1; None leaves the block dense)."""
    handles = []
    for l, mask in enumerate(masks):
        if mask is not None:
            factor = unit.expand(model, l, mask)
            handles.append(unit.gate(model, l).register_forward_hook(
                lambda mod, inp, out, m=factor: out * m.to(device=out.device, dtype=out.dtype)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activation_stats(model: nn.Module, unit: Unit, batches,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Mean, mean |a| and variance of every unit's output over all tokens of `batches` (float64 sums;
    `reduce` adds up the sums of several processes), `[L, width]` each (a unit of several channels, a
    head, averages over them); `channel_mean` is `[L, width * channels]`, what compensation folds."""
    L = len(model.blocks)
    sums = [None] * L
    count = [0]

    def hook(i):
        def f(module, inp, out):
            a = out.detach().reshape(-1, out.shape[-1]).double()
            s = torch.stack([a.sum(0), a.abs().sum(0), (a * a).sum(0)])
            sums[i] = s if sums[i] is None else sums[i] + s
            if i == 0:
                count[0] += a.shape[0]
        return f

    handles = [unit.gate(model, i).register_forward_hook(hook(i)) for i in range(L)]
    try:
        for batch in batches:
            model(batch[0])
    finally:
        for h in handles:
            h.remove()
    reduce = reduce or (lambda t: t)
    widths = unit.widths(model)
    chans = [unit.channels(model, i) for i in range(L)]
    total = torch.stack([sums[i].cpu() if sums[i] is not None else torch.zeros(3, widths[i] * chans[i], dtype=torch.float64)
                         for i in range(L)])  # a process without images still joins the sum
    total, n = reduce(total), int(reduce(torch.tensor([count[0]], dtype=torch.float64)).item())
    if n == 0:
        raise ConfigError("no calibration images: the calibration split is empty")
    s = total / n  # [L, 3, width * channels]
    mean, abs_mean, sq = (s[:, i].contiguous() for i in range(3))
    var = (sq - mean * mean).clamp_min(0)
    per_unit = lambda t: t.reshape(L, widths[0], -1).mean(-1)  # noqa: E731  (a dense model: equal widths)
    return {"mean": per_unit(mean), "abs_mean": per_unit(abs_mean), "var": per_unit(var), "channel_mean": mean,
            "tokens": torch.tensor(n)}


def objective_value(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Per row: log p(target) ("logprob", minus the cross-entropy) or p(target) ("prob", the paper's F)."""
    logp = acc(logits).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return logp if objective == "logprob" else logp.exp()


def block_attribution(model: nn.Module, unit: Unit, block: int, images: torch.Tensor, targets: torch.Tensor, *,
                      steps: int | None, objective: str = "logprob", rows: int | None = None) -> torch.Tensor:
    """Attribution of every unit of `block` to the objective, per image: `[n, width]`.

    `steps=m`: integrated gradients. All the block's units are scaled together, at every token, by
    alpha_k = k/m (k < m, the paper's left Riemann sum) while the rest of the model runs as it is
    (with whatever `unit_masks` are active, i.e. earlier blocks already pruned):
    `IG[j] = (1/m) sum_k sum_tokens a_j * dF/dh_j |_(alpha_k a)`; summed over j it is
    F(block intact) - F(block's units removed), up to the Riemann error (completeness).
    `steps=None`: the alpha = 1 end of that path, `sum_tokens a_j * dF/dh_j` at the clean point
    (first-order Taylor of F in the unit's output).
    """
    alphas = torch.ones(1, dtype=torch.float64) if steps is None else torch.arange(steps, dtype=torch.float64) / steps
    return _gated_gradients(model, unit, block, images, targets, alphas, objective, rows)


def _gated_gradients(model, unit, block, images, targets, alphas, objective, rows) -> torch.Tensor:
    """Mean over `alphas` of dF/dgate_j, where gate `[width]` multiplies the block's units (= alpha)."""
    vit = ViTAdapter(model)
    m = len(alphas)
    per_chunk = max(1, (rows or 4 * m) // m)
    out = []
    with frozen(model):
        for s in range(0, len(images), per_chunk):
            x, y = images[s:s + per_chunk], targets[s:s + per_chunk]
            with torch.no_grad():
                h_in = vit.embed(x)
                for i in range(block):
                    h_in = vit.post(i, *vit.pre(i, h_in))
                rest, h = unit.split(vit, block, h_in)
            rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
            width = unit.widths(model)[block]
            gate = alphas.to(h.device, h.dtype).repeat(len(y))[:, None].expand(-1, width).clone()
            gate.requires_grad_()
            with torch.enable_grad():
                z = unit.join(vit, block, rep(rest), rep(h) * unit.expand(model, block, gate)[:, None, :])
                for i in range(block + 1, vit.depth):
                    z = vit.post(i, *vit.pre(i, z))
                value = objective_value(vit.head(z), rep(y), objective)
                (g,) = torch.autograd.grad(value.sum(), gate)
            out.append(acc(g).reshape(len(y), m, -1).mean(1).double().cpu())
    return torch.cat(out)


def first_order_all(model: nn.Module, units: list[Unit], images: torch.Tensor, targets: torch.Tensor, *,
                    objective: str = "logprob") -> dict[str, list[torch.Tensor]]:
    """`block_attribution(..., steps=None)` of every block and every kind in `units` from one gated forward
    and backward: a gate of ones `[n, width]` on every block's units, and the gradient of the summed
    objective with respect to all of them. Each block's gradient is the same as when only that block is
    gated (a gate of ones changes nothing in the forward), so this equals the per-block scores at a
    fraction of the cost. Returns `{kind: [n, width] per block}`."""
    gates: dict[str, list[torch.Tensor]] = {}
    handles = []
    n = len(images)
    for unit in units:
        gates[unit.kind] = []
        for l, w in enumerate(unit.widths(model)):
            g = torch.ones(n, w, device=images.device, requires_grad=True)
            gates[unit.kind].append(g)
            if w == 0:  # an emptied branch (cut by an earlier step): nothing to gate
                continue
            factor = lambda g=g, u=unit, l=l: u.expand(model, l, g)[:, None, :]  # noqa: E731
            handles.append(unit.gate(model, l).register_forward_hook(
                lambda mod, inp, out, f=factor: out * f().to(out.dtype)))
    try:
        with frozen(model), torch.enable_grad():
            value = objective_value(model(images), targets, objective)
            flat = [g for kind in gates.values() for g in kind]
            grads = torch.autograd.grad(value.sum(), flat, allow_unused=True)
            grads = [torch.zeros_like(g) if d is None else d for g, d in zip(flat, grads)]
    finally:
        for h in handles:
            h.remove()
    out, i = {}, 0
    for kind, gs in gates.items():
        out[kind] = [acc(g).double().cpu() for g in grads[i:i + len(gs)]]
        i += len(gs)
    return out


class ClassBalancedMean:
    """Accumulates per-image `[n, width]` scores as |score| summed per class; `value()` averages within
    each class and sums over classes, so every class counts equally whatever its number of images.
    Sums and counts add across shards (processes), so the result does not depend on how images split."""

    def __init__(self, num_classes: int, width: int):
        self.sums = torch.zeros(num_classes, width, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.cpu().long()
        self.sums.index_add_(0, labels, scores.abs().double().cpu())
        self.counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))

    def value(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """`reduce` adds up the sums and counts of several processes first."""
        sums, counts = (self.sums, self.counts) if reduce is None else (reduce(self.sums), reduce(self.counts))
        seen = counts > 0
        return (sums[seen] / counts[seen, None]).sum(0)


def attribution_rows(model: nn.Module, unit: Unit, batches: Callable[[], Iterable], num_classes: int, *,
                     steps: int | None, objective: str, rows: int | None = None,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[int], torch.Tensor]:
    """A block scorer (`block -> [width]`): block attribution over all images of `batches()`
    (`(images, labels, ...)`), aggregated with `ClassBalancedMean` (summed over processes by `reduce`)."""
    def score(t: int) -> torch.Tensor:
        agg = ClassBalancedMean(num_classes, unit.widths(model)[t])
        for batch in batches():
            x, y = batch[0], batch[1]
            agg.add(block_attribution(model, unit, t, x, y, steps=steps, objective=objective, rows=rows), y)
        return agg.value(reduce)
    return score


def first_order_tables(model: nn.Module, units: list[Unit], batches: Callable[[], Iterable], num_classes: int, *,
                       objective: str, rows: int | None = None,
                       reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """First-order attribution `[L, width]` of every kind in `units`, class-balanced like `attribution_rows`,
    from one gated forward and backward per batch (`first_order_all`; `rows` images at a time)."""
    aggs = {u.kind: [ClassBalancedMean(num_classes, w) for w in u.widths(model)] for u in units}
    for batch in batches():
        x, y = batch[0], batch[1]
        step = rows or len(y)
        for s in range(0, len(y), step):
            got = first_order_all(model, units, x[s:s + step], y[s:s + step], objective=objective)
            for kind, per_block in got.items():
                for agg, g in zip(aggs[kind], per_block):
                    agg.add(g, y[s:s + step])
    return {kind: stack_rows([agg.value(reduce) for agg in per_block]) for kind, per_block in aggs.items()}
