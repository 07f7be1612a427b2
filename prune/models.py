"""Build or load a timm ViT, and the adapter that exposes its FFN neurons block by block.

A model spec is either a timm model name (`vit_base_patch16_224.augreg2_in21k_ft_in1k`), or a local
directory holding `config.json` (`architecture`, `model_kwargs`, optional `mean`/`std`; or timm's format,
`model_args` and `pretrained_cfg`, as a pruned-model directory has) and `model.safetensors`, or the name
of a model shipped with the package (`digits-vit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# the model-directory format is checkpoint's; these names are re-exported for existing callers
from .checkpoint import ASSETS, EMBEDDED_MODELS, ModelSpec, load_model_weights, read_model_config  # noqa: F401
from .checkpoint import resolve_model_dir
from .errors import ConfigError, UnsupportedModelError
from .units.base import is_empty


@dataclass
class DataConfig:
    """How images must be prepared for a model (timm's data config, overridable by `config.json`)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def as_dict(self) -> dict:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}


def load_model(spec: str, *, pretrained: bool = True, **overrides) -> tuple[nn.Module, DataConfig, ModelSpec]:
    """Build a model in eval mode from a timm name or a local model directory.

    Returns the model, the data config its inputs need, and the spec that rebuilds it.
    """
    import timm
    from timm.data import resolve_data_config

    local = resolve_model_dir(spec)
    if local is None and spec.startswith((".", "/", "~")):
        raise ConfigError(f"model directory {spec} does not exist; give a timm model name or a directory "
                          "with config.json and model.safetensors")
    if local is not None:
        cfg = read_model_config(local)
        if cfg["architecture"] == "prune_vit":
            from . import timm_model  # noqa: F401  (registers prune_vit, a pruned model's architecture)
        kwargs = {**cfg.get("model_kwargs", {}), **overrides}
        model = _create(timm, cfg["architecture"], pretrained=False, **kwargs)
        load_model_weights(model, local, f"{cfg['architecture']} {kwargs}", pretrained)
        mspec = ModelSpec(cfg["architecture"], kwargs)
    else:
        model = _create(timm, spec, pretrained=pretrained, **overrides)
        cfg = {}
        mspec = ModelSpec(spec, dict(overrides))

    model.eval()
    timm_cfg = resolve_data_config(model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    input_size = tuple(timm_cfg["input_size"])
    if img_size is not None:  # the size the model was built for (timm's default config may say 224)
        input_size = (3, *img_size)
    data_cfg = DataConfig(
        input_size=input_size,
        mean=tuple(cfg.get("mean", timm_cfg["mean"])),
        std=tuple(cfg.get("std", timm_cfg["std"])),
        interpolation=cfg.get("interpolation", timm_cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 1.0 if local is not None else timm_cfg.get("crop_pct", 1.0))),
    )
    return model, data_cfg, mspec


def _create(timm, name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        if "Unknown model" in str(e):
            raise ConfigError(f"unknown model '{name}': give a timm model name (see timm.list_models) "
                              "or a directory with config.json and model.safetensors") from None
        raise
    except ValueError as e:
        raise ConfigError(f"model '{name}' could not be built: {str(e).splitlines()[0]}") from None
    except TypeError as e:
        raise ConfigError(f"model '{name}' rejected its arguments: {e}") from None


_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_MLP_PARTS = ("fc1", "act", "drop1", "norm", "fc2", "drop2")


class ViTAdapter:
    """Runs a timm `VisionTransformer` block by block, split at each FFN activation.

    `pre(i, x)` returns the residual stream after block i's attention and the FFN neurons
    `h = act(fc1(norm2(x)))` (`[B, T, D]`); `post(i, x_mid, h)` finishes the block from (possibly
    edited) neurons. Splitting here is what lets path search replace a layer's neurons with fixed
    tensors and reuse the unchanged prefix of the network from one stage to the next.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        missing = [a for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head") if not hasattr(model, a)]
        if missing:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not a timm VisionTransformer-style model (missing {', '.join(missing)}); "
                "prune supports timm ViT/DeiT models whose blocks have mlp.fc1/act/fc2")
        for i, blk in enumerate(model.blocks):
            miss = [p for p in _BLOCK_PARTS if not hasattr(blk, p)]
            if is_empty(getattr(blk, "mlp", None)):  # every neuron removed: the branch is fc2's bias
                continue
            miss += [f"mlp.{p}" for p in _MLP_PARTS if not hasattr(getattr(blk, "mlp", None), p)]
            if miss:
                raise UnsupportedModelError(
                    f"block {i} ({type(blk).__name__}) lacks {', '.join(miss)}; prune supports pre-norm "
                    "ViT blocks with a plain Mlp (fc1 -> act -> fc2), not GLU/SwiGLU or post-norm blocks")
            if not isinstance(blk.mlp.fc1, nn.Linear) or not isinstance(blk.mlp.fc2, nn.Linear):
                raise UnsupportedModelError(f"block {i}: mlp.fc1/fc2 must be nn.Linear")
        if getattr(model, "attn_pool", None) is not None:
            raise UnsupportedModelError("models with attention-pool heads (global_pool='map') are not supported")
        self.blocks = list(model.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.global_pool = getattr(model, "global_pool", "token")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def widths(self) -> list[int]:
        """FFN hidden width (number of neurons) of each block."""
        return [0 if is_empty(b.mlp) else b.mlp.fc1.out_features for b in self.blocks]

    @property
    def reads_cls(self) -> bool:
        """True when the prediction is read from the CLS token (the paper's setting)."""
        return self.num_prefix_tokens >= 1 and self.global_pool == "token"

    def default_scope(self) -> str:
        return "cls" if self.reads_cls else "tokens"

    def check_scope(self, scope: str) -> str:
        if scope == "auto":
            return self.default_scope()
        if scope not in ("cls", "tokens"):
            raise ConfigError(f"scope must be 'cls', 'tokens' or 'auto', not {scope!r}")
        if scope == "cls" and not self.reads_cls:
            raise ConfigError(
                f"scope='cls' needs a model that reads out its CLS token, but this one pools with "
                f"global_pool={self.global_pool!r} over {self.num_prefix_tokens} prefix token(s); use scope='tokens'")
        return scope

    # --- the forward, in pieces -------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def pre(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.blocks[i]
        return self.pre_mlp(i, x + b.drop_path1(b.ls1(b.attn(b.norm1(x)))))

    def pre_mlp(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the residual stream after block i's attention to its FFN neurons: `(x, h)`."""
        b = self.blocks[i]
        if is_empty(b.mlp):
            return x, x.new_zeros(*x.shape[:-1], 0)
        return x, b.mlp.act(b.mlp.fc1(b.norm2(x)))

    def post(self, i: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        b = self.blocks[i]
        mlp = b.mlp
        if is_empty(mlp):
            return x + b.drop_path2(b.ls2(mlp(x)))
        return x + b.drop_path2(b.ls2(mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(h))))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for i in range(self.depth):
            x = self.post(i, *self.pre(i, x))
        return self.head(x)

    @torch.no_grad()
    def verify(self, images: torch.Tensor, atol: float = 1e-4) -> None:
        """Check that the piecewise forward equals the model's own forward on `images`."""
        ref, got = self.model(images), self.forward(images)
        err = (ref - got).abs().max().item()
        if not err <= atol * max(1.0, ref.abs().max().item()):
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the block-by-block forward differs from model(x) by {err:.3g}; "
                "its blocks do something prune's ViT adapter does not model")
