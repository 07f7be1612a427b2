"""Public entry points of the neuron-path engine: `locate_paths`, `path_score`, `edit_paths`."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models import ViTAdapter
from . import attribution as A

METHODS = ("jas", "activation", "influence_pattern", "layer_ig", "random")
TARGETS = ("label", "pred")
_RESULT_TENSORS = ("neurons", "scores", "candidate_scores", "labels", "targets", "target_prob", "rows")


@dataclass
class PathResult:
    """Neuron paths of N images.

    neurons: `[N, L, K]` neuron index per layer (layer order = `model.blocks`), best first.
    scores: `[N]` joint attribution score (JAS) of each image's path.
    candidate_scores: `[N, L, D]` the dense per-layer score the method ranked (JA_t for "jas"),
        or None when `keep_candidates=False`.
    labels: `[N]` the given labels; targets: `[N]` the class whose probability was attributed;
    target_prob: `[N]` that probability on the clean image.
    rows: `[N]` optional dataset row of each image.
    """

    neurons: torch.Tensor
    scores: torch.Tensor
    candidate_scores: torch.Tensor | None
    labels: torch.Tensor
    targets: torch.Tensor
    target_prob: torch.Tensor
    settings: dict = field(default_factory=dict)
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.neurons.shape[0]

    def save(self, path) -> None:
        """Write to a safetensors file (atomically), settings in its metadata; no pickle."""
        from safetensors.torch import save_file

        from ..io import atomic_path

        tensors = {k: getattr(self, k).contiguous() for k in _RESULT_TENSORS if getattr(self, k) is not None}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "prune.PathResult/1", "settings": json.dumps(self.settings)})

    @classmethod
    def load(cls, path) -> "PathResult":
        from safetensors import safe_open

        from ..io import check_safetensors

        with safe_open(str(check_safetensors(path)), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "prune.PathResult/1":
                raise ConfigError(f"{path} is not a prune path-result file")
            tensors = {k: f.get_tensor(k) if k in f.keys() else None for k in _RESULT_TENSORS}
        return cls(**tensors, settings=json.loads(meta["settings"]))

    @staticmethod
    def concat(parts: list["PathResult"]) -> "PathResult":
        cands = [p.candidate_scores for p in parts]
        rows = [p.rows for p in parts]
        return PathResult(
            neurons=torch.cat([p.neurons for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            candidate_scores=None if any(c is None for c in cands) else torch.cat(cands),
            labels=torch.cat([p.labels for p in parts]),
            targets=torch.cat([p.targets for p in parts]),
            target_prob=torch.cat([p.target_prob for p in parts]),
            settings=parts[0].settings,
            rows=None if any(r is None for r in rows) else torch.cat(rows),
        )


def _autocast(device: torch.device, amp: bool | None):
    """bf16 autocast on CUDA when asked (`amp=True`); by default every run is exact float32."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check(vit: ViTAdapter, method: str, steps: int, top_k: int, scope: str, target: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown path method {method!r}; choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be a positive integer, not {steps!r}")
    if not (isinstance(top_k, int) and 1 <= top_k <= min(vit.widths())):
        raise ConfigError(f"top_k must be an integer in [1, {min(vit.widths())}], not {top_k!r}")
    if len(set(vit.widths())) != 1:
        raise ConfigError("path search needs the same FFN width in every layer (run it on the dense model)")
    return vit.check_scope(scope)


def images_per_chunk(batch_size: int | None, steps: int, method: str) -> int:
    """Images processed together: `batch_size` counts rows (images x steps); every method scores its
    path with `steps` interpolated rows per image, so the same rule bounds memory for all."""
    if batch_size is None:
        return 4
    return max(1, batch_size // steps)


def locate_paths(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                 method: str = "jas", steps: int = 20, top_k: int = 1, scope: str = "cls",
                 target: str = "label", batch_size: int | None = None, progress: bool = True,
                 keep_candidates: bool = True, seed: int = 0, amp: bool = False) -> PathResult:
    """Find the influential neuron path of each image (the paper's Algorithm 1, or a baseline).

    method: "jas" (layer-progressive joint attribution), or the baselines "activation",
        "influence_pattern", "layer_ig", "random" (see the method page in the README).
    steps: m, the Riemann steps of integrated gradients (alpha = k/m, k < m).
    top_k: neurons kept per layer; with "jas" all K chosen neurons of earlier layers are
        interpolated and enter the score (the released code counts only the last one).
    scope: "cls" reads/edits neurons at the CLS token (the paper); "tokens" treats a neuron as its
        channel across all tokens (per-token scores, summed): for average-pooled models, and the
        natural unit for structural pruning. "auto" picks "cls" when the model reads its CLS token.
    target: "label" attributes the probability of `labels`; "pred" of the clean prediction.
    batch_size: rows per chunk (images x steps; an image's m steps are never split). Peak memory
        is about the activations a training step of `batch_size` samples keeps ("jas" with scope
        "tokens" keeps its prefix graph across stages too: about twice that). Default: 4 images.
    amp: bf16 autocast on CUDA (faster; paths may differ where scores nearly tie). Default off:
        float32 everywhere, the paper's setting.
    Every image is independent: results do not depend on chunking beyond float rounding.
    """
    vit = ViTAdapter(model)
    scope = _check(vit, method, steps, top_k, scope, target)
    if labels is None and target == "label":
        raise ConfigError("target='label' needs labels (or pass target='pred')")
    device = next(model.parameters()).device
    per_chunk = images_per_chunk(batch_size, steps, method)
    gen = torch.Generator().manual_seed(seed)
    settings = dict(method=method, steps=steps, top_k=top_k, scope=scope, target=target)
    parts = []
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(images), desc=f"paths[{method}]", unit="img", disable=not progress)
    try:
        with A.frozen(model):
            for start in range(0, len(images), per_chunk):
                x = images[start:start + per_chunk].to(device)
                y = None if labels is None else torch.as_tensor(labels[start:start + per_chunk]).to(device)
                parts.append(_locate_chunk(vit, x, y, method=method, steps=steps, top_k=top_k, scope=scope,
                                           target=target, keep=keep_candidates, gen=gen, amp=amp))
                parts[-1].settings = settings
                bar.update(len(x))
    finally:
        bar.close()
        model.train(was_training)
    return PathResult.concat(parts)


def _locate_chunk(vit, x, y, *, method, steps, top_k, scope, target, keep, gen, amp) -> PathResult:
    with _autocast(x.device, amp):
        logits, acts = A.clean_pass(vit, x, scope)
        targets = logits.argmax(-1) if target == "pred" else y
        prob = A.target_prob(logits, targets)
        score = None
        if method == "jas" and scope == "cls":  # measured faster than backpropagating the prefix, same paths
            neurons, cands, score = A.forward_mode_search(vit, x, targets, acts, steps=steps, top_k=top_k)
        elif method in ("jas", "layer_ig"):
            neurons, cands, score = A.progressive_search(vit, x, targets, acts, steps=steps, top_k=top_k,
                                                         scope=scope, joint=method == "jas")
        else:
            if method == "activation":
                cands = torch.stack([a.sum(1) for a in acts], 1)
            elif method == "influence_pattern":
                cands = A.influence_pattern(vit, x, targets, steps=steps, scope=scope)
            else:  # random
                cands = torch.rand(x.shape[0], vit.depth, vit.widths()[0], generator=gen).to(x.device)
            neurons = cands.topk(top_k, dim=-1).indices
        if score is None:
            score = A.joint_score(vit, x, targets, acts, list(neurons.unbind(1)), steps=steps, scope=scope)
    return PathResult(neurons=neurons.cpu(), scores=score.detach().cpu(),
                      candidate_scores=cands.detach().cpu() if keep else None,
                      labels=(y if y is not None else targets).cpu(), targets=targets.cpu(),
                      target_prob=prob.cpu())


def path_score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, neurons: torch.Tensor, *,
               steps: int = 20, scope: str = "cls", batch_size: int | None = None, amp: bool = False) -> torch.Tensor:
    """JAS `[N]` of given paths `neurons` `[N, L, K]` (or `[N, L]`), for the probability of `labels`."""
    vit = ViTAdapter(model)
    scope = vit.check_scope(scope)
    neurons = neurons[..., None] if neurons.dim() == 2 else neurons
    device = next(model.parameters()).device
    per_chunk = images_per_chunk(batch_size, steps, "jas")
    out = []
    with A.frozen(model):
        for s in range(0, len(images), per_chunk):
            x = images[s:s + per_chunk].to(device)
            with _autocast(device, amp):
                _, acts = A.clean_pass(vit, x, scope)
                paths = list(neurons[s:s + per_chunk].to(device).unbind(1))
                y = torch.as_tensor(labels[s:s + per_chunk]).to(device)
                out.append(A.joint_score(vit, x, y, acts, paths, steps=steps, scope=scope).detach().cpu())
    return torch.cat(out)


def edit_paths(model: torch.nn.Module, images: torch.Tensor, neurons: torch.Tensor, op: str = "remove", *,
               scope: str = "cls", batch_size: int = 64) -> torch.Tensor:
    """Logits with each image's path neurons zeroed ("remove") or doubled ("enhance") in every layer.

    The paper's probability-deviation test edits them at the CLS token (scope "cls").
    """
    factors = {"remove": 0.0, "enhance": 2.0}
    if op not in factors:
        raise ConfigError(f"op must be 'remove' or 'enhance', not {op!r}")
    vit = ViTAdapter(model)
    scope = vit.check_scope(scope)
    neurons = neurons[..., None] if neurons.dim() == 2 else neurons
    device = next(model.parameters()).device
    return torch.cat([
        A.edited_logits(vit, images[s:s + batch_size].to(device), neurons[s:s + batch_size].to(device),
                        factors[op], scope).cpu()
        for s in range(0, len(images), batch_size)])
