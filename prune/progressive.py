"""Layer-progressive pruning: score block t's FFN neurons on the model whose blocks < t are already
pruned, remove block t's lowest-scoring neurons, go on to block t + 1.

This is the paper's layer-progressive locating (Algorithm 1: layer t's choice is made given the
choices of layers < t) turned into a pruner: the "path" kept in each layer is the set of neurons
that survive. A removed neuron is a zero activation, which is exactly what removing its fc1 row and
fc2 column does to the forward pass, so blocks < t are pruned by masking their activations
(`neuron_masks`) and the model is cut structurally only once, by the prune stage, from the table
this produces. `tests/test_progressive.py` checks that against scoring each block on a model
pruned for real.

Block scorers (one per criterion that supports progressive mode, `Criterion.score_block`):
`block_attribution` with m steps (integrated gradients of scaling the block's channels:
`path_attribution`) or at the clean point (`activation_taylor`), and Torch-Pruning's Taylor on the
masked model (`importance.Taylor`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .models import ViTAdapter
from .paths.attribution import acc, frozen
from .pruning import kept_indices


@contextlib.contextmanager
def neuron_masks(model: nn.Module, masks: list[torch.Tensor | None]):
    """Multiply each block's FFN activation by `masks[l]` (`[D]` of 0/1; None leaves it dense)."""
    handles = []
    for block, mask in zip(model.blocks, masks):
        if mask is not None:
            handles.append(block.mlp.act.register_forward_hook(
                lambda mod, inp, out, m=mask: out * m.to(device=out.device, dtype=out.dtype)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def keep_mask(row: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask of the neurons the prune stage will keep (`pruning.kept_indices`, the same rule)."""
    mask = torch.zeros(len(row))
    mask[kept_indices(row, keep)] = 1.0
    return mask


def objective_value(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Per row: log p(target) ("logprob", minus the cross-entropy) or p(target) ("prob", the paper's F)."""
    logp = acc(logits).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return logp if objective == "logprob" else logp.exp()


def block_attribution(model: nn.Module, block: int, images: torch.Tensor, targets: torch.Tensor, *,
                      steps: int | None, objective: str = "logprob", rows: int | None = None) -> torch.Tensor:
    """Attribution of every FFN neuron of `block` to the objective, per image: `[n, D]`.

    `steps=m`: integrated gradients. All D channels of the block are scaled together, at every
    token, by alpha_k = k/m (k < m, the paper's left Riemann sum) while the rest of the model runs
    as it is (with whatever `neuron_masks` are active, i.e. earlier blocks already pruned):
    `IG[j] = (1/m) sum_k sum_tokens a_j * dF/dh_j |_(alpha_k a)`; summed over j it is
    F(block intact) - F(block's FFN removed), up to the Riemann error (completeness).
    `steps=None`: the alpha = 1 end of that path, `sum_tokens a_j * dF/dh_j` at the clean point
    (first-order Taylor of F in the neuron's activation).
    """
    alphas = torch.ones(1, dtype=torch.float64) if steps is None else torch.arange(steps, dtype=torch.float64) / steps
    return _gated_gradients(model, block, images, targets, alphas, objective, rows)


def _gated_gradients(model, block, images, targets, alphas, objective, rows) -> torch.Tensor:
    """Mean over `alphas` of dF/dgate_j, where gate `[D]` multiplies the block's activation (= alpha)."""
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
                xm, h = vit.pre(block, h_in)
            rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
            gate = alphas.to(h.device, h.dtype).repeat(len(y))[:, None].expand(-1, h.shape[-1]).clone()
            gate.requires_grad_()
            with torch.enable_grad():
                z = vit.post(block, rep(xm), rep(h) * gate[:, None, :])
                for i in range(block + 1, vit.depth):
                    z = vit.post(i, *vit.pre(i, z))
                value = objective_value(vit.head(z), rep(y), objective)
                (g,) = torch.autograd.grad(value.sum(), gate)
            out.append(acc(g).reshape(len(y), m, -1).mean(1).double().cpu())
    return torch.cat(out)


class ClassBalancedMean:
    """Accumulates per-image `[n, D]` scores as |score| summed per class; `value()` averages within each
    class and sums over classes, so every class counts equally whatever its number of images.
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


def progressive_table(model: nn.Module, score_block: Callable[[int], torch.Tensor], keep: list[int], *,
                      done: dict[int, torch.Tensor] | None = None,
                      on_block: Callable[[int, torch.Tensor], None] | None = None,
                      progress: bool = True) -> torch.Tensor:
    """Score block 0, keep its `keep[0]` best neurons, score block 1 with block 0 pruned, ... -> `[L, D]`.

    `score_block(t)` is called with blocks < t masked to their kept neurons and returns block t's
    scores `[D]` (higher = keep). `done` holds rows of an interrupted run (block -> scores), which
    are reused, so a resumed run continues with the same masks; `on_block(t, row)` is called after
    each new row (to checkpoint it). The prune stage later keeps, in each block, exactly the
    neurons these masks kept (`kept_indices`).
    """
    done = dict(done or {})
    L = len(model.blocks)
    masks: list[torch.Tensor | None] = [None] * L
    rows = []
    for t in tqdm(range(L), desc="progressive", unit="block", disable=not progress):
        if t in done:
            row = done[t].double().cpu()
        else:
            with neuron_masks(model, masks):
                row = score_block(t).double().cpu()
            if on_block is not None:
                on_block(t, row)
        rows.append(row)
        masks[t] = keep_mask(row, keep[t])
    return torch.stack(rows)


def attribution_rows(model: nn.Module, batches: Callable[[], Iterable], num_classes: int, *, steps: int | None,
                     objective: str, rows: int | None = None,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[int], torch.Tensor]:
    """A `score_block` for `progressive_table`: block attribution over all images of `batches()`
    (`(images, labels, ...)`), aggregated with `ClassBalancedMean` (summed over processes by `reduce`)."""
    def score(t: int) -> torch.Tensor:
        agg = ClassBalancedMean(num_classes, model.blocks[t].mlp.fc1.out_features)
        for batch in batches():
            x, y = batch[0], batch[1]
            agg.add(block_attribution(model, t, x, y, steps=steps, objective=objective, rows=rows), y)
        return agg.value(reduce)
    return score
