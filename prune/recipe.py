"""The recipe: schema and defaults (pydantic), YAML loading and `--set a.b=c` overrides (OmegaConf),
and full validation before any work starts. Every problem is one line naming the key and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .defaults import MAX_LAYER_RATIO, MIN_LAYER_RATIO
from .errors import ConfigError

PACKAGED = Path(__file__).parent / "recipes"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelCfg(_Section):
    name: str = "digits-vit"  # timm name, model directory, or 'digits-vit'
    pretrained: bool = True
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model arguments


class DataCfg(_Section):
    source: str = "digits"  # HF dataset id, local dataset directory, or 'digits'
    train_split: str = "train"  # paths and calibration images come from here
    eval_split: str = "test"  # accuracy is measured here
    image_column: str | None = None
    label_column: str | None = None
    eval_images: int | None = Field(None, ge=1)  # None: the whole eval split
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    skip_bad: bool = False  # skip undecodable images / bad labels (counted) instead of stopping


class PathsCfg(_Section):
    images_per_class: int = Field(10, ge=1)
    method: Literal["jas", "activation", "influence_pattern", "layer_ig", "random"] = "jas"
    steps: int = Field(20, ge=1)
    top_k: int = Field(20, ge=1)  # top-20 pruned best (benchmarks/RESULTS.md, discovery budget)
    scope: Literal["auto", "cls", "tokens"] = "auto"  # for pruning, auto = tokens (every token's neurons)
    target: Literal["label", "pred"] = "label"
    batch_size: int | None = Field(None, ge=1)
    seed: int = 0


class ImportanceCfg(_Section):
    kind: str = "activation_taylor"  # best measured with scope global (benchmarks/RESULTS.md, section 6)
    calibration_images: int = Field(256, ge=1)  # for activation statistics, taylor, compensation
    objective: Literal["logprob", "prob"] = "logprob"  # what path_attribution / activation_taylor explain
    seed: int = 0

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        from .criteria import CRITERIA

        if v not in CRITERIA:
            raise ValueError(f"unknown kind {v!r}; choose one of {', '.join(CRITERIA)}")
        return v


def _share(v, what: str, low_open: bool = True):
    """A fraction in (0, 1] (or [0, 1) for floors), given once or per unit kind."""
    from .units import UNITS

    values = v.items() if isinstance(v, dict) else [(None, v)]
    for kind, x in values:
        if kind is not None and kind not in UNITS:
            raise ValueError(f"unknown unit kind {kind!r}; choose from {', '.join(UNITS)}")
        if not ((0 < x <= 1) if low_open else (0 <= x < 1)):
            raise ValueError(f"{what} must be in {'(0, 1]' if low_open else '[0, 1)'}, not {x}")
    return v


class LatencyCfg(_Section):
    """Where `prune.latency_ratio` pays: the runtime the model will be deployed on (`prune/latency.py`)."""

    runtime: Literal["onnxruntime", "pytorch"] = "onnxruntime"
    provider: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)  # None: the runtime's default
    ffn_step: int = Field(64, ge=1)  # FFN widths measured every this many neurons (interpolated between)
    # a table measured on a busy machine (measured twice): plan with it and say so (warn), or stop (error)
    on_noise: Literal["warn", "error"] = "warn"

    def spec(self):
        from .latency import LatencySpec

        return LatencySpec(**self.model_dump(exclude={"on_noise"}))


TARGETS = ("ratio", "macs_ratio", "latency_ratio")  # the prune targets; any one may be a list (a sweep)
MAX_SWEEP = 16  # targets in one sweep


def _target(v, key: str):
    """A share in (0, 1), or a list of distinct ones (a sweep: one pruned model per value)."""
    values = v if isinstance(v, list) else [v]
    if isinstance(v, list) and not 1 <= len(v) <= MAX_SWEEP:
        raise ValueError(f"a sweep lists 1 to {MAX_SWEEP} targets, not {len(v)}")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1:
            raise ValueError(f"must be in (0, 1), or a list of such values (a sweep), not {x!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a target twice")
    return [float(x) for x in v] if isinstance(v, list) else float(v)


def _drop_unpruned_kinds(p) -> None:
    """Per-kind settings for a kind `prune.units` leaves alone: a cap or a rounding constrains nothing there and is
    dropped (a recipe capping heads still works with `--set prune.units=[ffn]`); a floor above 0 would demand
    removing units that are never pruned and is refused, with the fix."""
    for key in ("max_layer_ratio", "min_layer_ratio", "round_to"):
        value = getattr(p, key)
        if not isinstance(value, dict):
            continue
        floored = sorted(k for k, v in value.items() if k not in p.units and v > 0)
        if key == "min_layer_ratio" and floored:
            raise ValueError(f"prune.min_layer_ratio makes blocks lose {', '.join(floored)}, which prune.units "
                             f"{p.units} does not prune; add it to prune.units or drop its floor")
        if set(value) - set(p.units):
            setattr(p, key, {k: v for k, v in value.items() if k in p.units})


class PruneCfg(_Section):
    units: list[str] = Field(default_factory=lambda: ["ffn"])  # what is pruned: ffn (neurons), heads (attention heads)
    ratio: float | list[float] = 0.5  # fraction of each pruned kind's units removed
    macs_ratio: float | list[float] | None = None  # share of the dense model's MACs to remove (replaces ratio)
    latency_ratio: float | list[float] | None = None  # share of the dense model's measured latency to remove
    latency: LatencyCfg = Field(default_factory=LatencyCfg)  # where latency_ratio is measured
    scope: Literal["uniform", "global"] = "global"  # the criterion's scores decide each block's width
    max_layer_ratio: float | dict[str, float] = MAX_LAYER_RATIO  # global: most of a block's units of a kind that may go (1: all)
    min_layer_ratio: float | dict[str, float] = MIN_LAYER_RATIO  # macs_ratio: least of a block's units of a kind that must go
    round_to: int | dict[str, int] | None = None  # kept widths are multiples of this (per kind: {ffn: 64})
    compensate: Literal["none", "mean"] = "none"
    mode: Literal["oneshot", "progressive", "iterative"] = "oneshot"  # progressive: block l scored with blocks < l pruned
    iterations: int = Field(4, ge=2)  # iterative: the target in this many steps, re-scored between them
    budget_kind: str | None = None  # scope global: this criterion's scores set the widths (default: importance.kind)
    classes: list[int | str] | None = None  # specialise: keep only these classes (indices or names)
    # lstsq: re-fit each branch's output layer; blockwise: also train each block (prune/reconstruct.py)
    reconstruct: Literal["none", "lstsq", "blockwise"] = "none"
    reconstruct_images: int = Field(256, ge=1)  # training images whose tokens the re-fit solves on
    reconstruct_ridge: float = Field(1e-3, ge=0)  # ridge, relative to the features' mean square
    # share of each image's squared error its prefix (CLS) tokens carry in the re-fit (null: every token alike);
    # the classifier reads the CLS token, and a fit to every token alike can lower top-1 (RESULTS.md section 13)
    reconstruct_prefix_share: float | None = Field(0.5, gt=0, lt=1)
    # then the classifier re-fitted to the dense logits on this many training images (0: left as cut)
    reconstruct_head_images: int = Field(1024, ge=0)
    reconstruct_steps: int = Field(100, ge=0, le=100_000)  # blockwise: Adam steps per block
    reconstruct_lr: float = Field(3e-4, gt=0, le=1)  # blockwise: Adam's learning rate, cosine-decayed to 0
    reconstruct_start: Literal["lstsq", "pruned"] = "lstsq"  # blockwise: train from the lstsq re-fit or the cut weights

    @field_validator(*TARGETS, mode="before")
    @classmethod
    def _targets(cls, v, info):
        return v if v is None else _target(v, info.field_name)

    def swept(self) -> str | None:
        """The target given as a list (a sweep), or None."""
        lists = [k for k in TARGETS if isinstance(getattr(self, k), list)]
        return lists[0] if lists else None

    @field_validator("units")
    @classmethod
    def _known_units(cls, v):
        from .units import UNITS

        if not v:
            raise ValueError(f"name one or more unit kinds to prune: {', '.join(UNITS)}")
        for k in v:
            if k not in UNITS:
                raise ValueError(f"unknown unit kind {k!r}; choose from {', '.join(UNITS)}")
        if len(set(v)) != len(v):
            raise ValueError("a unit kind is listed twice")
        return v

    @field_validator("max_layer_ratio")
    @classmethod
    def _cap(cls, v):
        return _share(v, "max_layer_ratio")

    @field_validator("min_layer_ratio")
    @classmethod
    def _floor(cls, v):
        return _share(v, "min_layer_ratio", low_open=False)

    @field_validator("round_to")
    @classmethod
    def _round(cls, v):
        from .units import UNITS

        for kind, x in (v.items() if isinstance(v, dict) else [(None, v)]):
            if kind is not None and kind not in UNITS:
                raise ValueError(f"unknown unit kind {kind!r}; choose from {', '.join(UNITS)}")
            if x is not None and x < 1:
                raise ValueError(f"round_to must be 1 or more, not {x}")
        return v

    @field_validator("budget_kind")
    @classmethod
    def _known_budget(cls, v):
        from .criteria import CRITERIA

        if v is not None and v not in CRITERIA:
            raise ValueError(f"unknown kind {v!r}; choose one of {', '.join(CRITERIA)}")
        return v


class DistillCfg(_Section):
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the distillation term
    temperature: float = Field(2.0, gt=0)
    features: bool = False  # also match every block's output (residual stream) to the dense model's
    feature_weight: float = Field(1.0, gt=0)  # weight of that per-block loss beside the logit loss


class FinetuneCfg(_Section):
    epochs: int = Field(0, ge=0)  # 0: no fine-tuning
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # auto: bf16 where the hardware has it
    train_images: int | None = Field(None, ge=1)  # None: the whole train split (less the held-out slice)
    holdout: float = Field(0.05, ge=0, lt=0.5)  # share of the train split held out to pick the best weights (0: last)
    distill: DistillCfg | None = None  # from the dense model
    seed: int = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # YAML reads a bare `no` (as in --set finetune.mixed_precision=no) as false


class ExportCfg(_Section):
    enabled: bool = True
    opset: int = Field(18, ge=18)  # the torch.export-based exporter writes opset 18 and later
    atol: float = Field(1e-4, gt=0)  # max |ORT - PyTorch| of the logits (scaled by max |logit| when > 1)
    quantize: list[Literal["dynamic", "static"]] = Field(default_factory=list)  # int8 files beside fp32 (empty: none)
    calibration_images: int = Field(256, ge=1)  # static int8: training images that calibrate activation ranges
    max_int8_drop: float = Field(0.01, ge=0, lt=1)  # an int8 file losing more top-1 than this vs fp32 is flagged
    fail_on_int8_drop: bool = False  # and then the run exits non-zero (after writing everything)

    @field_validator("quantize")
    @classmethod
    def _once(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a quantisation mode is listed twice")
        return v


class BenchCfg(_Section):
    enabled: bool = True
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    warmup: int = Field(3, ge=0)
    repeats: int = Field(20, ge=1)
    threads: int | None = Field(None, ge=1)  # None: torch's default
    pytorch: bool = True
    onnxruntime: bool = True
    until_stable: bool = False  # repeat the measurement (up to 5 rounds) until no median moves more than 3%

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v):
        if not v or any(b < 1 for b in v):
            raise ValueError("give one or more positive batch sizes")
        return v


class ReportCfg(_Section):
    heatmap_classes: int = Field(4, ge=0)
    max_drop: float = Field(0.01, ge=0, lt=1)  # a sweep recommends the fastest artifact within this top-1 of dense


class Recipe(_Section):
    name: str = "run"
    description: str = ""
    model: ModelCfg = Field(default_factory=ModelCfg)
    data: DataCfg = Field(default_factory=DataCfg)
    paths: PathsCfg = Field(default_factory=PathsCfg)
    importance: ImportanceCfg = Field(default_factory=ImportanceCfg)
    prune: PruneCfg = Field(default_factory=PruneCfg)
    finetune: FinetuneCfg = Field(default_factory=FinetuneCfg)
    export: ExportCfg = Field(default_factory=ExportCfg)
    bench: BenchCfg = Field(default_factory=BenchCfg)
    report: ReportCfg = Field(default_factory=ReportCfg)

    def sweep(self) -> list[tuple[str | None, "Recipe"]]:
        """`(label, recipe)` for every target: one scalar recipe per value of the swept target, labelled
        `key-value`; `[(None, self)]` when nothing is swept."""
        key = self.prune.swept()
        if key is None:
            return [(None, self)]
        dumped = self.model_dump(mode="json")
        out = []
        for value in getattr(self.prune, key):
            one = {**dumped, "prune": {**dumped["prune"], key: value}}
            out.append((f"{key}-{value:g}", Recipe.model_validate(one)))
        return out

    @model_validator(mode="after")
    def _consistent(self):
        p = self.prune
        _drop_unpruned_kinds(p)
        key = p.swept()
        if key is not None:
            others = [k for k in TARGETS if k != key and isinstance(getattr(p, k), list)]
            if others:
                raise ValueError(f"sweep one target: prune.{key} and prune.{others[0]} are both lists")
            if key == "ratio" and (p.macs_ratio is not None or p.latency_ratio is not None):
                other = "macs_ratio" if p.macs_ratio is not None else "latency_ratio"
                raise ValueError(f"prune.ratio is a list but prune.{other} replaces it; sweep prune.{other} instead")
            dumped = self.model_dump(mode="json")
            for value in getattr(p, key):  # every target must be a valid recipe on its own
                try:
                    Recipe.model_validate({**dumped, "prune": {**dumped["prune"], key: value}})
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ValueError(f"with prune.{key} {value:g}: {_describe(err).removeprefix('recipe: ')}") from None
            return self
        caps = p.max_layer_ratio if isinstance(p.max_layer_ratio, dict) else {k: p.max_layer_ratio for k in p.units}
        if (p.macs_ratio is None and p.latency_ratio is None and p.scope == "global"
                and min(caps.get(k, MAX_LAYER_RATIO) for k in p.units) < p.ratio):
            raise ValueError(f"prune.max_layer_ratio {p.max_layer_ratio} < prune.ratio {p.ratio}: "
                             "global pruning could not reach the ratio; raise max_layer_ratio")
        if p.ratio != PruneCfg.model_fields["ratio"].default and (p.macs_ratio is not None or p.latency_ratio is not None):
            other = "macs_ratio" if p.macs_ratio is not None else "latency_ratio"
            raise ValueError(f"prune.ratio {p.ratio} would be ignored: prune.{other} is the target; set "
                             f"prune.{other} instead, or prune.{other}=null to remove a share of each kind's units")
        if p.macs_ratio is not None and p.latency_ratio is not None:
            raise ValueError("give one target: prune.macs_ratio (a share of MACs) or prune.latency_ratio (a share "
                             "of measured latency), not both; set the other to null (--set prune.macs_ratio=null)")
        if p.latency_ratio is not None and p.scope != "global":
            raise ValueError("prune.latency_ratio ranks units across blocks and kinds by score per millisecond: it "
                             "needs prune.scope: global")
        if p.macs_ratio is not None and p.scope != "global":
            raise ValueError("prune.macs_ratio ranks units across blocks and kinds by score per MAC: it needs "
                             "prune.scope: global")
        if p.min_layer_ratio and p.macs_ratio is None and p.latency_ratio is None:
            raise ValueError("prune.min_layer_ratio is a floor of a MACs or latency budget: it needs "
                             "prune.macs_ratio or prune.latency_ratio")
        if self.prune.budget_kind is not None and self.prune.scope != "global":
            raise ValueError("prune.budget_kind ranks a criterion across blocks to set their widths: it needs "
                             "prune.scope: global")
        from .criteria import scorers

        try:  # the criterion (and the one that fills in for it) can score every kind the run prunes
            scorers(self.importance.kind, p.budget_kind, p.units, across_blocks=p.scope == "global",
                    one_budget=p.macs_ratio is not None or p.latency_ratio is not None)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if self.prune.mode == "progressive":
            from .criteria import CRITERIA

            if not CRITERIA[self.importance.kind].progressive:
                able = ", ".join(k for k, c in CRITERIA.items() if c.progressive)
                raise ValueError(f"prune.mode progressive needs a criterion that scores one block at a time on a "
                                 f"partly pruned model ({able}), not {self.importance.kind!r}")
        if self.prune.mode == "iterative":
            from .criteria import CRITERIA

            able = ", ".join(k for k, c in CRITERIA.items() if c.progressive)
            for key, kind in (("importance.kind", self.importance.kind), ("prune.budget_kind", p.budget_kind)):
                if kind is not None and not CRITERIA[kind].progressive:
                    raise ValueError(f"prune.mode iterative re-scores the partly pruned model, which {key} {kind!r} "
                                     f"cannot (it reads the dense model's paths or statistics); use one of {able}")
        if self.bench.enabled and self.bench.onnxruntime and not self.export.enabled:
            raise ValueError("bench.onnxruntime needs export.enabled: true (or set bench.onnxruntime: false)")
        return self


def packaged_recipes() -> list[str]:
    return sorted(p.name for p in PACKAGED.glob("*.yaml"))


def resolve_recipe_path(name: str) -> Path:
    """A path as given, else a recipe shipped with the package (with or without `.yaml`)."""
    p = Path(name).expanduser()
    if p.is_file() or (p.exists() and not p.is_dir()) or p.is_symlink():  # a device or pipe: refused when read
        return p
    for cand in (PACKAGED / p.name, PACKAGED / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"recipe {name} not found; give a YAML file or one of: {', '.join(packaged_recipes())}")


def _section(annotation):
    """The pydantic model inside an annotation such as `DistillCfg | None`."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel))


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not key:
        return f"recipe: {msg}"
    if err["type"] == "extra_forbidden":
        parent = Recipe
        for part in err["loc"][:-1]:
            parent = _section(parent.model_fields[part].annotation)
        return f"recipe key {key}: unknown key; valid keys here are {', '.join(parent.model_fields)}"
    return f"recipe key {key}: {msg} (got {err.get('input')!r})"


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few KB
MAX_RECIPE_VALUES = 10_000  # keys and values, aliases expanded: a "billion laughs" recipe stops here
_REFERENCE = re.compile(r"\$\{[A-Za-z0-9_.\[\]-]+\}")  # ${section.key}: the one interpolation a recipe may use


def _plain(tree, where: str) -> None:
    """Refuse what a recipe must not hold: more than `MAX_RECIPE_VALUES` keys and values once YAML aliases are
    expanded (a few lines of anchors can expand to billions), keys that are not scalars, and OmegaConf
    resolvers (`${oc.env:...}` reads the environment, others decode or build values): only references to other
    keys (`${section.key}`) are interpolated."""
    stack, seen = [((), tree)], 0
    while stack:
        key, node = stack.pop()
        seen += 1
        if seen > MAX_RECIPE_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_RECIPE_VALUES:,} keys and values (YAML aliases?); "
                              "a recipe is a few sections of plain values")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, (str, int, float, bool)):
                    raise ConfigError(f"{where}: key {str(k)[:80]!r} under {'.'.join(map(str, key)) or 'the top'} "
                                      "is not a plain name")
                stack.append(((*key, k), v))
        elif isinstance(node, list):
            stack.extend(((*key, i), v) for i, v in enumerate(node))
        elif isinstance(node, str) and "${" in node and _REFERENCE.sub("", node).count("${"):
            raise ConfigError(f"{where}: recipe key {'.'.join(map(str, key))} is {node[:120]!r}: a recipe may refer to "
                              "other keys (${section.key}) but call no OmegaConf resolvers (such as ${oc.env:...})")


def _yaml_problem(e: Exception) -> str:
    """One line for a YAML error; a tag that would construct an object is named as refused."""
    import yaml

    problem = str(getattr(e, "problem", "") or str(e).splitlines()[0])
    if isinstance(e, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return (f"the YAML tag {tag[:120]} is refused: a recipe holds plain values (prune never builds objects "
                "from YAML)")
    mark = getattr(e, "problem_mark", None)
    return f"{problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


def load_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply `key.sub=value` overrides, validate the schema.

    The file and every override are plain YAML values (`yaml.safe_load`; a tag that would construct an object
    is refused), at most `MAX_RECIPE_BYTES` and `MAX_RECIPE_VALUES`, with no OmegaConf resolvers (`_plain`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    import yaml

    from .io import read_text

    path = resolve_recipe_path(name)
    try:
        raw = yaml.safe_load(read_text(path, "recipe", MAX_RECIPE_BYTES))
    except yaml.YAMLError as e:
        problem = _yaml_problem(e)
        raise ConfigError(f"recipe {path}: {problem}" if "is refused" in problem
                          else f"recipe {path} is not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path} cannot be read: {e}") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is nested too deeply to be a recipe") from None
    if raw is None:
        raise ConfigError(f"recipe {path} is empty; start from a shipped recipe (prune recipes) and change what you need")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (model, data, paths, importance, prune, ...), "
                          f"not a {type(raw).__name__}")
    _plain(raw, f"recipe {path}")
    try:
        base = OmegaConf.create(raw)
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {path}: {str(e).splitlines()[0]}") from None
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item!r}: write it as key.sub=value, e.g. --set prune.ratio=0.3")
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as e:  # OmegaConf parses the value with a safe YAML loader
            raise ConfigError(f"--set {item[:120]!r}: {_yaml_problem(e)}") from None
        except (OmegaConfBaseException, TypeError, ValueError, RecursionError) as e:
            raise ConfigError(f"--set {item[:120]!r}: {str(e).splitlines()[0]}") from None
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides or [])))
        _plain(OmegaConf.to_container(merged, resolve=False), f"recipe {path} with its --set overrides")
        data = OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, TypeError, ValueError) as e:  # e.g. a section given as a list
        raise ConfigError(f"recipe {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (model, data, paths, importance, prune)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e.errors()[0])) from None


def validate_environment(recipe: Recipe) -> None:
    """Checks that need the world, still before any work: dataset path, model buildable and a supported ViT."""
    import timm

    from .data import check_source
    from .models import ViTAdapter, load_model, resolve_model_dir

    try:
        check_source(recipe.data.source)
    except ConfigError as e:
        raise ConfigError(f"recipe key data.source: {e}") from None
    _check_data(recipe)
    name = recipe.model.name
    hub = name.startswith(("timm/", "hf-hub:"))
    if resolve_model_dir(name) is None and ("/" in name or name.startswith((".", "~"))) and not hub:
        raise ConfigError(f"recipe key model.name: model directory {name} does not exist; point it at a directory "
                          "with config.json and model.safetensors (--set model.name=DIR) or give a timm model name")
    if resolve_model_dir(name) is None and not hub:
        base = name.split(".")[0].removeprefix("timm/").removeprefix("hf-hub:timm/")
        if not timm.is_model(base):
            raise ConfigError(f"recipe key model.name: unknown model {name!r}; give a timm model name "
                              "or a directory with config.json and model.safetensors")
    try:
        # a local directory is loaded as the run will load it (its weights checked); hub weights are not downloaded here
        local = resolve_model_dir(name) is not None
        model, _, spec = load_model(name, pretrained=recipe.model.pretrained and local, **recipe.model.kwargs)
        if spec.architecture == "prune_vit":  # scoring and budgets assume the equal blocks of a dense model
            raise ConfigError(f"{name} is a model prune already pruned (config.json architecture prune_vit); a "
                              "recipe starts from a dense model: give the one it was pruned from (its README.md "
                              "names it as base_model)")
        _check_classes(recipe, model.num_classes)
        vit = ViTAdapter(model)
        vit.check_scope(recipe.paths.scope)
        if recipe.paths.top_k > min(vit.widths()):
            raise ConfigError(f"top_k {recipe.paths.top_k} exceeds the FFN width {min(vit.widths())}")
    except ConfigError as e:
        if str(e).startswith("prune.classes"):
            raise ConfigError(f"recipe key {e}") from None
        key = "paths" if "scope" in str(e) or "top_k" in str(e) else "model.name"
        raise ConfigError(f"recipe key {key}: {e}") from None


def _check_data(recipe: Recipe) -> None:
    """Every split the recipe reads exists and has the image and label columns."""
    from .data import find_columns, load_split
    from .errors import DataError

    d = recipe.data
    for key, split in (("data.train_split", d.train_split), ("data.eval_split", d.eval_split)):
        try:
            ds = load_split(d.source, split)
        except ConfigError as e:
            raise ConfigError(f"recipe key {key}: {e}") from None
        except DataError as e:
            raise ConfigError(f"recipe key data.source: {e}") from None
        try:
            find_columns(ds, d.image_column, d.label_column)
        except ConfigError as e:
            col = "data.image_column" if "image column" in str(e) else "data.label_column"
            raise ConfigError(f"recipe key {col}: {e} (split {split!r})") from None


def _check_classes(recipe: Recipe, num_classes: int) -> None:
    """`prune.classes` against the model's classes (and the dataset's class names when names are given)."""
    from .classes import class_names, resolve_classes

    spec = recipe.prune.classes
    if spec is None:
        return
    names = None
    if any(isinstance(c, str) and not c.strip().isdigit() for c in spec):
        from .data import find_columns, load_split

        ds = load_split(recipe.data.source, recipe.data.train_split)
        names = class_names(ds, find_columns(ds, recipe.data.image_column, recipe.data.label_column)[1])
    resolve_classes(spec, num_classes, names)
