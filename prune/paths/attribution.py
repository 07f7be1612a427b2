"""Batched joint attribution: the computations behind every path method, on one chunk of images.

Notation (see docs of `locate_paths`): n images, m steps, R = n*m rows ordered image-major
(row = image * m + k, alpha_k = k/m), L layers, D neurons per layer, T' = 1 token for
scope "cls" (the CLS token) or all T tokens for scope "tokens".

A *leaf* replaces a layer's neurons at the scoped tokens with a fixed tensor (clean values, some
scaled by alpha) that requires grad, so one backward gives dF/dh for every replaced layer and
earlier edits cannot reach a replaced layer, exactly as the released code overwrites the vector.
"""

from __future__ import annotations

import contextlib

import torch

from ..models import ViTAdapter


def scoped(h: torch.Tensor, scope: str) -> torch.Tensor:
    """The neurons a path method reads: CLS row `[B, 1, D]` or all tokens `[B, T, D]`."""
    return h[:, :1] if scope == "cls" else h


def splice(h: torch.Tensor, leaf: torch.Tensor, scope: str) -> torch.Tensor:
    """`h` with its scoped tokens replaced by `leaf` (cast to `h`'s dtype, e.g. bf16 under autocast)."""
    leaf = leaf.to(h.dtype)
    return torch.cat([leaf, h[:, 1:]], dim=1) if scope == "cls" else leaf


def acc(t: torch.Tensor) -> torch.Tensor:
    """`t` in the accumulation dtype: at least float32 (float64 models stay float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def target_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F(x) = softmax(logits)[target], in float32."""
    return acc(logits).softmax(-1).gather(1, targets[:, None])[:, 0]


def gather_neurons(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`x[b, t, idx[b, k]]` for x `[B, T', D]`, idx `[B, K]` -> `[B, T', K]`."""
    return x.gather(-1, idx[:, None, :].expand(-1, x.shape[1], -1))


def interpolated(clean: torch.Tensor, idx: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Clean neurons `[R, T', D]` with the neurons in `idx` `[R, K]` scaled by `alpha` `[R]`."""
    out = clean.clone()
    index = idx[:, None, :].expand(-1, clean.shape[1], -1)
    out.scatter_(-1, index, clean.gather(-1, index) * alpha[:, None, None])
    return out


def step_alphas(n: int, steps: int, like: torch.Tensor) -> torch.Tensor:
    """alpha_k = k/m for k = 0..m-1 (left Riemann sum), repeated for n images: `[n*m]`."""
    return (torch.arange(steps, device=like.device, dtype=like.dtype) / steps).repeat(n)


def step_sum(g: torch.Tensor, n: int, steps: int) -> torch.Tensor:
    """Sum a per-row tensor `[n*m, ...]` over the m steps of each image -> `[n, ...]`."""
    return g.reshape(n, steps, *g.shape[1:]).sum(1)


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Parameters stop requiring grad, so backward passes compute input gradients only."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


@torch.no_grad()
def clean_pass(vit: ViTAdapter, images: torch.Tensor, scope: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One unmodified forward: logits and the clean scoped neurons `[n, T', D]` of every layer."""
    x = vit.embed(images)
    acts = []
    for i in range(vit.depth):
        x, h = vit.pre(i, x)
        acts.append(acc(scoped(h, scope)))
        x = vit.post(i, x, h)
    return vit.head(x), acts


def joint_terms(acts: list[torch.Tensor], grads: list[torch.Tensor], paths: list[torch.Tensor],
                n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token sums over the path neurons: `sum_l a_l[p_l]` and `sum_k sum_l g_l(k)[p_l]`, each `[n, T']`."""
    a_sum = sum(gather_neurons(a, p).sum(-1) for a, p in zip(acts, paths))
    g_sum = sum(gather_neurons(step_sum(acc(g), n, steps), p).sum(-1) for g, p in zip(grads, paths))
    return a_sum, g_sum


def jas_from_terms(a_sum: torch.Tensor, g_sum: torch.Tensor, steps: int) -> torch.Tensor:
    """JAS = (sum a / m) * (sum g), per token, summed over the scoped tokens -> `[n]`."""
    return (a_sum * g_sum).sum(1) / steps


def extend_with_paths(vit: ViTAdapter, xm: torch.Tensor, h: torch.Tensor, start: int, stop: int,
                      acts: list[torch.Tensor], paths: list[torch.Tensor], alpha: torch.Tensor, scope: str):
    """Run layers start..stop-1 from layer `start`'s `(x_mid, h)`, each with its path neurons interpolated.

    Returns the residual stream after block stop-1 and the leaves that replaced each layer's neurons.
    """
    m = alpha.shape[0] // acts[0].shape[0]
    leaves, y = [], None
    for t in range(start, stop):
        if t > start:
            xm, h = vit.pre(t, y)
        leaf = interpolated(acts[t].repeat_interleave(m, 0), paths[t].repeat_interleave(m, 0), alpha)
        leaves.append(leaf.requires_grad_())
        y = vit.post(t, xm, splice(h, leaf, scope))
    return y, leaves


def progressive_search(vit: ViTAdapter, images: torch.Tensor, targets: torch.Tensor, acts: list[torch.Tensor],
                       *, steps: int, top_k: int, scope: str, joint: bool,
                       reuse_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Layer-progressive locating (Algorithm 1) when `joint`, per-layer IG when not.

    Stage t scales the whole scoped vector of layer t by alpha; with `joint`, layers < t
    interpolate their chosen neurons and their gradients and activations enter every candidate's
    score. The prefix of the network up to layer t's neurons does not change from stage t to t+1,
    so with `reuse_prefix` it is computed once and extended by one block per stage (its graph kept
    for the later backward passes), which halves the forward work; each stage costs one backward.

    Returns neurons `[n, L, K]`, dense candidate scores `[n, L, D]` and, with `joint`, the JAS of
    the found path (its final extension costs one more block and one backward) else None.
    """
    n, m, L = images.shape[0], steps, vit.depth
    with torch.no_grad():
        x0, h0 = vit.pre(0, vit.embed(images))  # identical for every step: compute once per image
    alpha = step_alphas(n, m, acts[0])
    rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
    xm, h = rep(x0), rep(h0)
    tgt = rep(targets)
    path_leaves: list[torch.Tensor] = []
    paths: list[torch.Tensor] = []
    chosen_a = torch.zeros(n, acts[0].shape[1], dtype=acts[0].dtype, device=x0.device)  # sum_{l<t} a_l[p_l]
    cands = []
    for t in range(L):
        if joint and not reuse_prefix and t > 0:  # recompute the prefix from scratch (for measurement)
            y, path_leaves = extend_with_paths(vit, rep(x0), rep(h0), 0, t, acts, paths, alpha, scope)
            xm, h = vit.pre(t, y)
        leaf = (alpha[:, None, None] * rep(acts[t])).requires_grad_()
        y = vit.post(t, xm, splice(h, leaf, scope))
        for i in range(t + 1, L):
            y = vit.post(i, *vit.pre(i, y))
        prob = target_prob(vit.head(y), tgt)
        grads = torch.autograd.grad(prob.sum(), [leaf, *path_leaves], retain_graph=joint and reuse_prefix)
        del y, prob
        g_t = step_sum(acc(grads[0]), n, m)  # [n, T', D]
        if joint and t > 0:
            _, chosen_g = joint_terms(acts[:t], list(grads[1:]), paths, n, m)
        else:
            chosen_g = torch.zeros_like(chosen_a)
        del grads
        ja = ((acts[t] + chosen_a[..., None]) * (g_t + chosen_g[..., None])).sum(1) / m  # [n, D]
        p = ja.topk(top_k, dim=-1).indices
        cands.append(ja)
        paths.append(p)
        if joint:
            chosen_a = chosen_a + gather_neurons(acts[t], p).sum(-1)
            if reuse_prefix:
                y, new = extend_with_paths(vit, xm, h, t, t + 1, acts, paths, alpha, scope)
                path_leaves += new
                if t + 1 < L:
                    xm, h = vit.pre(t + 1, y)
        elif t + 1 < L:
            with torch.no_grad():  # per-layer IG: the prefix stays clean
                xm, h = vit.pre(t + 1, vit.post(t, xm, h))
    score = None
    if joint:
        if not reuse_prefix:
            y, path_leaves = extend_with_paths(vit, rep(x0), rep(h0), 0, L, acts, paths, alpha, scope)
        prob = target_prob(vit.head(y), tgt)
        grads = torch.autograd.grad(prob.sum(), path_leaves)
        score = jas_from_terms(*joint_terms(acts, list(grads), paths, n, m), m)
    return torch.stack(paths, 1), torch.stack(cands, 1), score


def forward_mode_search(vit: ViTAdapter, images: torch.Tensor, targets: torch.Tensor, acts: list[torch.Tensor],
                        *, steps: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 (scope "cls") with the earlier path neurons' gradient sum taken in forward mode.

    `sum_{l<t} sum_p dF/dh_l[p]` is the derivative of F along the direction that moves every
    earlier path neuron by 1: the prefix state (x_mid, h) at layer t carries that tangent,
    extended by one block per stage with `torch.func.jvp` (PyTorch's fused CPU attention has no
    forward-mode rule, so that one block runs the math attention kernel). Each stage then needs a
    backward only through the blocks after layer t, and the prefix graph is not kept, which also
    bounds memory to one stage. The sum is the same quantity as the backward formulation's, up
    to float rounding.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, m, L = images.shape[0], steps, vit.depth
    with torch.no_grad():
        x0, h0 = vit.pre(0, vit.embed(images))
    alpha = step_alphas(n, m, acts[0])
    rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
    xm, h = rep(x0), rep(h0)
    dxm, dh = torch.zeros_like(xm), torch.zeros_like(h)  # d(state)/d(earlier path neurons)
    tgt = rep(targets)
    paths, cands = [], []
    chosen_a = torch.zeros(n, 1, dtype=acts[0].dtype, device=x0.device)
    for t in range(L):
        leaf = (alpha[:, None, None] * rep(acts[t])).requires_grad_()
        xm_in, h_in = xm.detach().requires_grad_(), h.detach().requires_grad_()
        y = vit.post(t, xm_in, splice(h_in, leaf, "cls"))
        for i in range(t + 1, L):
            y = vit.post(i, *vit.pre(i, y))
        g_leaf, g_xm, g_h = torch.autograd.grad(target_prob(vit.head(y), tgt).sum(), [leaf, xm_in, h_in])
        del y
        directional = acc(g_xm * dxm).sum((1, 2)) + acc(g_h * dh).sum((1, 2))  # [R]; g_h's CLS row is 0
        chosen_g = step_sum(directional, n, m)[:, None]  # [n, 1]
        g_t = step_sum(acc(g_leaf), n, m)
        ja = ((acts[t] + chosen_a[..., None]) * (g_t + chosen_g[..., None])).sum(1) / m
        p = ja.topk(top_k, dim=-1).indices
        cands.append(ja)
        paths.append(p)
        chosen_a = chosen_a + gather_neurons(acts[t], p).sum(-1)
        pleaf = interpolated(rep(acts[t]), rep(p), alpha)
        onehot = torch.zeros_like(pleaf).scatter_(-1, rep(p)[:, None, :], 1.0)

        def extend(xm_, h_, leaf_, t=t):
            y_ = vit.post(t, xm_, splice(h_, leaf_, "cls"))
            return vit.pre(t + 1, y_) if t + 1 < L else y_

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            state, tangent = torch.func.jvp(extend, (xm, h, pleaf), (dxm, dh, onehot))
        if t + 1 < L:
            (xm, h), (dxm, dh) = state, tangent
    with torch.no_grad():
        prob, dprob = torch.func.jvp(lambda y_: target_prob(vit.head(y_), tgt), (state,), (tangent,))
    score = chosen_a[:, 0] * step_sum(acc(dprob), n, m) / m
    return torch.stack(paths, 1), torch.stack(cands, 1), score


def joint_score(vit: ViTAdapter, images: torch.Tensor, targets: torch.Tensor, acts: list[torch.Tensor],
                paths: list[torch.Tensor], *, steps: int, scope: str) -> torch.Tensor:
    """JAS of given paths (`paths[l]` `[n, K]`): only path neurons are interpolated, in every layer."""
    n, m = images.shape[0], steps
    with torch.no_grad():
        x0, h0 = vit.pre(0, vit.embed(images))
    alpha = step_alphas(n, m, acts[0])
    y, leaves = extend_with_paths(vit, x0.repeat_interleave(m, 0), h0.repeat_interleave(m, 0), 0, vit.depth,
                                  acts, paths, alpha, scope)
    prob = target_prob(vit.head(y), targets.repeat_interleave(m, 0))
    grads = torch.autograd.grad(prob.sum(), leaves)
    return jas_from_terms(*joint_terms(acts, list(grads), paths, n, m), m)


def influence_pattern(vit: ViTAdapter, images: torch.Tensor, targets: torch.Tensor, *, steps: int,
                      scope: str) -> torch.Tensor:
    """Mean over steps of dF/dh_l (gradient only), the input interpolated from a zero image: `[n, L, D]`."""
    n, m = images.shape[0], steps
    rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
    alpha = step_alphas(n, m, images)
    with torch.no_grad():
        inputs = rep(images) * alpha[:, None, None, None]
    x = vit.embed(inputs).requires_grad_()  # a leaf here keeps the graph and stops backward early
    hs = []
    for i in range(vit.depth):
        x, h = vit.pre(i, x)
        hs.append(h)
        x = vit.post(i, x, h)
    prob = target_prob(vit.head(x), rep(targets))
    grads = torch.autograd.grad(prob.sum(), hs)
    return torch.stack([step_sum(acc(scoped(g, scope)), n, m).sum(1) / m for g in grads], 1)


@torch.no_grad()
def edited_logits(vit: ViTAdapter, images: torch.Tensor, paths: torch.Tensor, factor: float, scope: str) -> torch.Tensor:
    """Logits with each image's path neurons (`paths` `[n, L, K]`) multiplied by `factor` in every layer."""
    x = vit.embed(images)
    for i in range(vit.depth):
        x, h = vit.pre(i, x)
        h = h.clone()
        s = scoped(h, scope)  # a view: editing it edits h
        idx = paths[:, i, :][:, None, :].expand(-1, s.shape[1], -1)
        s.scatter_(-1, idx, s.gather(-1, idx) * factor)  # paths: [n, L, K]
        x = vit.post(i, x, h)
    return vit.head(x)
