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

`blockwise` visits the blocks in the same order and on the same inputs, but then trains every
parameter of block l (qkv, proj, fc1, fc2, norms, layer scales) with Adam against the dense block's
output on the cached calibration tokens; minibatches are drawn by image id, so that every process
draws the same ones and the summed gradients are those of one process. A trained block is kept only
when it lowers the block's error on all the calibration images.
"""

from __future__ import annotations

import functools
import math
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

    def add(self, x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Rows of `x` `[..., features]` and `target` `[..., outputs]`; `weights` (broadcast to the rows'
        leading shape, e.g. one per token) weigh each row's squared error."""
        rows = target.shape[:-1].numel()
        x = x.reshape(rows, x.shape[-1]).double()  # explicit rows: an emptied branch has 0 features
        x = torch.cat([x, x.new_ones(rows, 1)], 1)
        lead = target.shape[:-1]
        target = target.reshape(rows, target.shape[-1]).double()
        if weights is not None:
            root = weights.double().to(x.device).sqrt().expand(lead).reshape(rows, 1)
            x, target = x * root, target * root
        self.g += x.T @ x
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


def token_weights(model: nn.Module, block: int, tokens: int, prefix_weight: float = 1.0,
                  last_prefix_only: bool = False) -> torch.Tensor | None:
    """How much each token's error counts in block `block`'s fit (None: all alike). The prefix (CLS) tokens
    count `prefix_weight` times a patch token; with `last_prefix_only`, in the last block of a model that
    classifies from its prefix token (`global_pool == "token"`), whose patch outputs nothing reads, only the
    prefix counts."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    last_reads_prefix = (last_prefix_only and block == len(model.blocks) - 1
                         and getattr(model, "global_pool", "") == "token")
    if not prefix or (prefix_weight == 1.0 and not last_reads_prefix):
        return None
    w = torch.ones(tokens, dtype=torch.float64)
    w[:prefix] = prefix_weight
    if last_reads_prefix:
        w[prefix:] = 0.0
    return w


def prefix_weight_for(model: nn.Module, share: float | None) -> float:
    """The per-token weight of a prefix token that makes the prefix tokens carry `share` of an image's squared
    error (None: 1.0, every token alike). With 64 patches and one CLS token, share 0.5 is weight 64."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if share is None or not prefix:
        return 1.0
    patches = int(model.patch_embed.num_patches)
    return share / (1 - share) * patches / prefix


def _fit_branch(unit, vit: ViTAdapter, l: int, branch: nn.Module, ls: nn.Module, inputs: list[torch.Tensor],
                targets: list[torch.Tensor], ridge: float, reduce, prefix_weight: float = 1.0,
                last_prefix_only: bool = False) -> dict:
    """Re-fit block l's branch of `unit`s so that each stream in `inputs` plus the branch's output (after its
    LayerScale `ls`) matches the dense stream in `targets`: the output layer, or an emptied branch's constant."""
    empty, gamma = is_empty(branch), _scale(ls)
    layer = None if empty else unit.out_layer(vit.model, l)
    eq = NormalEquations(0 if empty else layer.in_features, vit.model.embed_dim,
                         next(vit.model.parameters()).device)
    for x, want in zip(inputs, targets):
        target = want - x
        target = target.double() / gamma if gamma is not None else target
        eq.add(x.new_zeros(*x.shape[:-1], 0) if empty else unit.out_input(vit, l, x), target,
               token_weights(vit.model, l, x.shape[1], prefix_weight, last_prefix_only))
    return _fit_layer(eq, layer, branch if empty else None, gamma, ridge, reduce)


def _sequential(pruned: nn.Module, dense: nn.Module, images: list[torch.Tensor], fit_block: Callable, desc: str,
                progress: bool) -> list[dict]:
    """Visit the blocks from input to output: `fit_block(pv, l, inputs, dense_mid, dense_out)` edits block l of
    `pruned` given its inputs (the pruned stream after the blocks already fitted, one tensor per batch of
    `images`), the dense stream after block l's attention and after block l; then both streams move past it."""
    pruned.eval()
    dense.eval()
    pv, dv = ViTAdapter(pruned), ViTAdapter(dense)
    with torch.no_grad():
        streams = [(dv.embed(x), pv.embed(x)) for x in images]  # (dense, pruned) residual streams
    rows = []
    for l in tqdm(range(pv.depth), desc=desc, unit="block", disable=not progress):
        db = dv.blocks[l]
        with torch.no_grad():
            dense_mid = [xd + db.ls1(db.attn(db.norm1(xd))) for xd, _ in streams]
            dense_out = [dv.post(l, *dv.pre_mlp(l, m)) for m in dense_mid]
        rows += fit_block(pv, l, [xp for _, xp in streams], dense_mid, dense_out)
        with torch.no_grad():
            streams = [(out, pv.post(l, *pv.pre(l, xp))) for out, (_, xp) in zip(dense_out, streams)]
    return rows


@torch.no_grad()
def _lstsq_block(pv: ViTAdapter, l: int, inputs, dense_mid, dense_out, *, ridge: float, reduce,
                 prefix_weight: float = 1.0, last_prefix_only: bool = False) -> list[dict]:
    """Re-fit block l's attention branch so that the stream after it is the dense stream after attention, then
    its FFN branch, on the re-fitted attention's output, so that the block's output is the dense one."""
    pb = pv.blocks[l]
    weigh = dict(prefix_weight=prefix_weight, last_prefix_only=last_prefix_only)
    rows = [{"block": l, "branch": "attn",
             **_fit_branch(HEADS, pv, l, pb.attn, pb.ls1, inputs, dense_mid, ridge, reduce, **weigh)}]
    mids = [xp + pb.ls1(pb.attn(pb.norm1(xp))) for xp in inputs]
    rows.append({"block": l, "branch": "ffn", **_fit_branch(FFN, pv, l, pb.mlp, pb.ls2, mids, dense_out, ridge,
                                                            reduce, **weigh)})
    return rows


def refit(pruned: nn.Module, dense: nn.Module, batches: Iterable, *, ridge: float = 1e-3,
          reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, progress: bool = False,
          prefix_weight: float = 1.0, last_prefix_only: bool = False) -> list[dict]:
    """Re-fit `pruned` in place on the images of `batches` (`(images, ...)`); one row per block and branch
    with its squared error before and after, as a share of what the branch should add to the stream
    (`token_weights`: how much the prefix tokens count)."""
    fit = functools.partial(_lstsq_block, ridge=ridge, reduce=reduce, prefix_weight=prefix_weight,
                            last_prefix_only=last_prefix_only)
    return _sequential(pruned, dense, [b[0] for b in batches if len(b[0])], fit, "reconstruct", progress)


@torch.no_grad()
def refit_head(pruned: nn.Module, dense: nn.Module, batches: Iterable, *, ridge: float = 1e-3,
               reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict | None:
    """Re-fit the classifier (`model.head`) by ridge least squares so that, on the pruned model's own pre-logits,
    it gives the dense model's logits on the images of `batches` (`(images, ...)`): what the re-fitted blocks
    still leave wrong in the one token the classifier reads, corrected where it is read. Kept only when it
    lowers the logits' squared error; None when the model has no linear head."""
    head = getattr(pruned, "head", None)
    if not isinstance(head, nn.Linear):
        return None
    pruned.eval()
    dense.eval()
    eq = NormalEquations(head.in_features, head.out_features, head.weight.device)
    for b in batches:
        x = b[0]
        if len(x):
            eq.add(pruned.forward_head(pruned.forward_features(x), pre_logits=True), dense(x))
    return {"block": "head", "branch": "head", **_fit_layer(eq, head, None, None, ridge, reduce)}


# --- blockwise: every parameter of the block trained against the dense block's output ---------------------------

BATCH_IMAGES = 32  # calibration images per Adam step (all of them when there are fewer)


def _block_error(f: Callable, inputs: list[torch.Tensor], targets: list[torch.Tensor], reduce) -> float:
    """Squared error of block `f` against the dense block outputs in `targets`, summed over every process's
    images, as a share of what the block should add to the stream (`targets - inputs`)."""
    sse = torch.zeros(2, dtype=torch.float64, device=targets[0].device)
    with torch.no_grad():
        for x, want in zip(inputs, targets):
            sse += torch.stack([(f(x) - want).double().pow(2).sum(), (want - x).double().pow(2).sum()])
    sse = reduce(sse)
    return float(sse[0] / sse[1].clamp_min(1e-30))


def _minibatches(keys: torch.Tensor, size: int, seed: int):
    """Endless minibatches of `keys` (the ids of every process's images), a fresh shuffle each pass: every
    process draws the same ones, and takes from each the images it holds."""
    g = torch.Generator().manual_seed(seed)
    while True:
        for chunk in keys[torch.randperm(len(keys), generator=g)].split(size):
            yield chunk


def _sum_grads(params: list[nn.Parameter], reduce) -> None:
    """Replace every gradient by its sum over processes, in one all-reduce (each process's loss is already
    divided by the size of the global minibatch, so the sum is the minibatch's mean gradient)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.reshape(-1) for g in grads]))
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p).to(p.dtype)


def _train_block(pv: ViTAdapter, l: int, inputs, dense_mid, dense_out, *, ids: list[torch.Tensor],
                 keys: torch.Tensor, steps: int, lr: float, seed: int, reduce) -> list[dict]:
    """Train every parameter of block l with Adam (cosine-decayed `lr`, `steps` steps of `BATCH_IMAGES` images)
    so that its output on `inputs` matches the dense block's; kept only when that lowers the block's error on
    all the calibration images."""
    block = pv.blocks[l]
    f = lambda x: pv.post(l, *pv.pre(l, x))  # noqa: E731
    before = _block_error(f, inputs, dense_out, reduce)
    start = {k: v.clone() for k, v in block.state_dict().items()}
    x, want, held = torch.cat(inputs), torch.cat(dense_out), torch.cat(ids).to(inputs[0].device)
    params = [p for p in block.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    draws = _minibatches(keys, min(BATCH_IMAGES, len(keys)), seed + l)
    with torch.enable_grad():
        for _ in range(steps):
            chosen = next(draws)
            mine = torch.isin(held, chosen.to(held.device))
            opt.zero_grad(set_to_none=True)
            if mine.any():
                err = (f(x[mine]) - want[mine]).pow(2).sum() / (len(chosen) * want[0].numel())
                err.backward()
            _sum_grads(params, reduce)
            opt.step()
            sched.step()
    after = _block_error(f, inputs, dense_out, reduce)
    if after >= before:
        block.load_state_dict(start)
    return [{"block": l, "branch": "block", "error_before": before, "error_after": min(before, after),
             "kept_old": after >= before}]


def blockwise(pruned: nn.Module, dense: nn.Module, batches: Iterable, *, steps: int = 100, lr: float = 3e-4,
              start: str = "lstsq", ridge: float = 1e-3, seed: int = 0, prefix_weight: float = 1.0,
              reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
              gather: Callable[[list], list] = list, progress: bool = False) -> list[dict]:
    """Re-fit `pruned` in place block by block like `refit`, but train every parameter of block l (after its
    least-squares re-fit when `start` is "lstsq") against the dense block's output on its cached inputs: a
    window that contains the nonlinearity can recover more than a linear fit of one matrix.

    `batches` are `(images, ids)`: ids name each image across processes (dataset rows; positions when
    omitted), so every process draws the same minibatches (`gather` lists every process's ids) and the
    summed gradients (`reduce`) are those one process would take. One row per block (and per branch of the
    least-squares start), errors as shares of what the block or branch should add to the stream."""
    if start not in ("lstsq", "pruned"):
        raise ValueError(f"start must be 'lstsq' or 'pruned', not {start!r}")
    batches = [b for b in batches if len(b[0])]
    ids, seen = [], 0
    for b in batches:
        ids.append(torch.as_tensor(b[1]) if len(b) > 1 else torch.arange(seen, seen + len(b[0])))
        seen += len(b[0])
    keys = torch.tensor(sorted(gather(torch.cat(ids).tolist() if ids else [])), dtype=torch.long)
    train = functools.partial(_train_block, ids=ids, keys=keys, steps=steps, lr=lr, seed=seed, reduce=reduce)
    lstsq = functools.partial(_lstsq_block, ridge=ridge, reduce=reduce, prefix_weight=prefix_weight)

    def fit(pv, l, inputs, dense_mid, dense_out):
        rows = lstsq(pv, l, inputs, dense_mid, dense_out) if start == "lstsq" else []
        return rows + (train(pv, l, inputs, dense_mid, dense_out) if steps and len(keys) else [])

    return _sequential(pruned, dense, [b[0] for b in batches], fit, "reconstruct", progress)
