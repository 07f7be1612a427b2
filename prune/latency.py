"""A cost model in measured time: what each block's attention and FFN branch costs on the runtime the
model will be deployed on, at every head count and over a grid of FFN widths (0 included: the branch
as its bias), so a budget can be paid in milliseconds (`prune.latency_ratio`) rather than MACs.

Dense blocks are identical, so one block is enough: its attention branch (`x + attn(norm1(x))`) is
built at every head count and its FFN branch (`x + mlp(norm2(x))`) at the grid widths, each exported
on its own (onnxruntime) or run as is (PyTorch) and timed alternately with warm-up (medians,
`bench.measure_until_stable`). The dense model is timed whole as well, and a prediction is anchored
there: predicted(model) = measured dense + the sum over blocks of (branch at its width - branch at
the dense width), which leaves out the per-graph overheads that separate small graphs add. Widths
between grid points are interpolated linearly.

A branch timed on its own saves more than the same branch inside the whole graph (on a 6-block model
the isolated steps predicted 2.00x where 1.81x was measured, RESULTS.md section 11), so each kind's
steps are calibrated in place: two whole-model probes are timed beside the dense model (every
attention branch emptied; every FFN at a quarter of its width), and each kind's table is scaled by
(measured saving of its probe) / (saving the isolated steps predict for it). The prediction is then
exact at the dense model and at both probes, and linear in each kind's steps in between.

Tables are cached by everything they depend on (block shape, tokens, runtime and provider, batch
size, threads, CPU model, library versions) under `$PRUNE_CACHE_DIR` (default `~/.cache/prune`), so
the second run on the same machine reuses it; the run records its table in the prune stage.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .units import FFN, HEADS, is_empty


@dataclass(frozen=True)
class LatencySpec:
    """Where latency is paid: runtime (onnxruntime or pytorch), provider (cpu or cuda), batch size, threads."""

    runtime: str = "onnxruntime"
    provider: str = "cpu"
    batch_size: int = 1
    threads: int | None = None
    ffn_step: int = 64  # FFN widths are measured every this many neurons (and at 0 and the dense width)


@dataclass
class LatencyTable:
    key: dict
    dense_ms: float  # the whole dense model, measured
    attn_ms: list[float]  # attention branch at 0..heads heads
    ffn_widths: list[int]  # grid
    ffn_ms: list[float]  # FFN branch at each grid width
    depth: int
    seconds: float = 0.0  # what measuring took
    noise: dict = field(default_factory=dict)
    # per kind, the factor that turns an isolated branch's steps into the whole graph's (module docstring);
    # absent: 1. `probes`: what the factor was fitted on (ms measured, ms the isolated steps predicted).
    scale: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)

    def attn(self, heads: int) -> float:
        return self.scale.get(HEADS.kind, 1.0) * self.attn_ms[heads]

    def ffn(self, width: float) -> float:
        """The FFN branch at `width` neurons, linear between grid points."""
        return self.scale.get(FFN.kind, 1.0) * self._ffn_isolated(width)

    def _ffn_isolated(self, width: float) -> float:
        xs, ys = self.ffn_widths, self.ffn_ms
        if width <= xs[0]:
            return ys[0]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if width <= x1:
                return y0 + (y1 - y0) * (width - x0) / (x1 - x0)
        return ys[-1]

    def branch(self, kind: str, width: int) -> float:
        return self.attn(width) if kind == HEADS.kind else self.ffn(width)

    def predict(self, widths: dict[str, list[int]]) -> float:
        """Predicted latency (ms) of a model with these per-block widths (kinds not given stay dense)."""
        dense = {HEADS.kind: len(self.attn_ms) - 1, FFN.kind: self.ffn_widths[-1]}
        delta = sum(self.branch(k, w) - self.branch(k, dense[k]) for k, ws in widths.items() for w in ws)
        return self.dense_ms + delta

    @property
    def noisy(self) -> bool:
        """Whether the table was measured on a busy machine (`noise["reasons"]` says how): its milliseconds,
        and every plan paid in them, are rough."""
        return bool(self.noise.get("noisy"))

    def noise_warning(self) -> str | None:
        if not self.noisy:
            return None
        return (f"the latency table was measured on a busy machine ({'; '.join(self.noise.get('reasons', []))}): "
                "its predictions are rough; measure it again with nothing else running")

    def to_json(self) -> dict:
        return asdict(self)


def _shell(block: nn.Module) -> nn.Module:
    """A module with `blocks = [block]`, what the unit kinds' `resize` and `empty` work on."""
    shell = nn.Module()
    shell.blocks = nn.ModuleList([block])
    return shell


class _Branch(nn.Module):
    """One residual branch of a block on its own: `x + ls(branch(norm(x)))`."""

    def __init__(self, block: nn.Module, kind: str):
        super().__init__()
        self.block, self.kind = block, kind

    def forward(self, x):
        b = self.block
        if self.kind == HEADS.kind:
            return x + b.ls1(b.attn(b.norm1(x)))
        return x + b.ls2(b.mlp(b.norm2(x)))


def _branches(model: nn.Module, spec: LatencySpec) -> dict[str, nn.Module]:
    """Every graph to time: `attn{h}`, `ffn{w}` (built from block 0 of the dense model)."""
    block = model.blocks[0]
    heads, width = HEADS.widths(model)[0], FFN.widths(model)[0]
    out = {}
    for h in range(heads + 1):
        shell = _shell(copy.deepcopy(block))
        if h < heads:
            HEADS.resize(shell, [h])
        out[f"attn{h}"] = _Branch(shell.blocks[0], HEADS.kind).eval()
    for w in ffn_grid(width, spec.ffn_step):
        shell = _shell(copy.deepcopy(block))
        if w < width:
            FFN.resize(shell, [w])
        out[f"ffn{w}"] = _Branch(shell.blocks[0], FFN.kind).eval()
    return out


def ffn_grid(width: int, step: int) -> list[int]:
    """FFN widths to time: 0 (the branch as its bias), 1 (the branch's fixed cost: its norm and three kernel
    launches, paid by any width above 0, so a width of a few neurons is not priced like an emptied
    branch), then every `step` neurons and the dense width."""
    return sorted({0, min(1, width), width, *range(step, width, step)})


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(model: nn.Module, spec: LatencySpec, input_size: tuple[int, ...]) -> dict:
    """Everything a latency table depends on."""
    import onnxruntime

    a = model.blocks[0].attn
    widths_ok = len(set(FFN.widths(model))) == 1 and len(set(HEADS.widths(model))) == 1
    if not widths_ok or any(is_empty(b.mlp) or is_empty(b.attn) for b in model.blocks):
        raise ConfigError("a latency table is measured on the dense model (identical blocks); this one is pruned")
    return {"version": 3, "architecture": type(model).__name__, "input_size": list(input_size),
            "depth": len(model.blocks), "dim": a.qkv.in_features, "heads": a.num_heads, "head_dim": a.head_dim,
            "mlp": FFN.widths(model)[0], "tokens": int(model.patch_embed.num_patches + model.num_prefix_tokens),
            "classes": int(model.num_classes), **asdict(spec), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNE_CACHE_DIR", Path.home() / ".cache" / "prune")) / "latency"


def _runners(modules: dict[str, nn.Module], example: torch.Tensor, spec: LatencySpec, tmp: Path) -> dict:
    """`{name: run(x)}` on the recipe's runtime."""
    from .bench import ort_runner, torch_runner

    if spec.runtime == "pytorch":
        device = torch.device("cuda" if spec.provider == "cuda" else "cpu")
        if spec.provider == "cuda" and not torch.cuda.is_available():
            raise ConfigError("prune.latency.provider cuda needs a CUDA device; use provider: cpu")

        def on_device(run):
            def f(x):
                out = run(x.to(device))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return out
            return f
        return {n: on_device(torch_runner(m.to(device))) for n, m in modules.items()}
    from .export import export_onnx

    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[spec.provider]
    if provider == "CUDAExecutionProvider":
        from .bench import cuda_provider_available

        if not cuda_provider_available():
            raise ConfigError("prune.latency.provider cuda needs onnxruntime's CUDA provider; use provider: cpu")
    out = {}
    for name, m in modules.items():
        path = tmp / f"{name}.onnx"
        export_onnx(m, example, path)
        out[name] = ort_runner(path, spec.threads, provider)
    return out


def measure_table(model: nn.Module, spec: LatencySpec, input_size: tuple[int, ...], *, repeats: int = 30,
                  log=print) -> LatencyTable:
    """Time the dense model and every branch graph (see the module docstring); minutes at most."""
    from .bench import measure_until_stable

    key = table_key(model, spec, input_size)
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    branches = _branches(model, spec)
    tokens, dim = key["tokens"], key["dim"]
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="prune-latency-") as tmp:
            log(f"[latency] measuring {len(branches) + 1} graphs on {spec.runtime} ({spec.provider}, batch "
                f"{spec.batch_size}, threads {spec.threads or 'default'})")
            runners = _runners(branches, torch.randn(spec.batch_size, tokens, dim), spec, Path(tmp))
            res, noise = measure_until_stable(runners, (tokens, dim), (spec.batch_size,), warmup=5, repeats=repeats)
            probes = _probes(model, key, spec)
            whole = _runners({"dense": model, **{f"probe_{k}": m for k, (m, _) in probes.items()}},
                             torch.randn(spec.batch_size, *input_size), spec, Path(tmp))
            dense_res, whole_noise = measure_until_stable(whole, tuple(input_size), (spec.batch_size,), warmup=5,
                                                          repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    ms = {n: r[str(spec.batch_size)]["median_ms"] for n, r in res.items()}
    whole_ms = {n: r[str(spec.batch_size)]["median_ms"] for n, r in dense_res.items()}
    grid = ffn_grid(key["mlp"], spec.ffn_step)
    table = LatencyTable(key=key, dense_ms=whole_ms["dense"],
                         attn_ms=[ms[f"attn{h}"] for h in range(key["heads"] + 1)], ffn_widths=grid,
                         ffn_ms=[ms[f"ffn{w}"] for w in grid], depth=key["depth"], noise=noise)
    for kind, (_, width) in probes.items():
        isolated = table.dense_ms - table.predict({kind: [width] * table.depth})
        measured = table.dense_ms - whole_ms[f"probe_{kind}"]
        # a factor far from 1 means a probe the clock could not resolve, not a real effect: keep the steps as timed
        trusted = isolated > 0 and 0.25 <= measured / isolated <= 4
        factor = measured / isolated if trusted else 1.0
        if not trusted and measured > 0.05 * table.dense_ms:  # a clear saving the steps cannot explain
            whole_noise = {**whole_noise, "noisy": True, "reasons": [
                *whole_noise.get("reasons", []), f"the {kind} probe saved {measured:.3f} ms where its isolated "
                f"steps predict {isolated:.3f} ms"]}
        table.scale[kind] = factor
        table.probes[kind] = {"width": width, "measured_ms": whole_ms[f"probe_{kind}"],
                              "isolated_prediction_ms": table.dense_ms - isolated, "factor": factor}
    table.noise = merge_noise(noise, whole_noise)
    table.seconds = time.perf_counter() - start
    return table


def merge_noise(branches: dict, whole: dict) -> dict:
    """One noise report for a table: its branch timings' (kept flat, as `bench.noise_report` gives it) with
    the whole-model timings' reasons added and the whole report under `whole`."""
    reasons = [*branches.get("reasons", []), *(f"whole model: {r}" for r in whole.get("reasons", []))]
    return {**branches, "noisy": bool(branches.get("noisy") or whole.get("noisy")), "reasons": reasons,
            "whole": whole}


def _probes(model: nn.Module, key: dict, spec: LatencySpec) -> dict[str, tuple[nn.Module, int]]:
    """Whole-model graphs that calibrate each kind's steps: every attention branch emptied; every FFN at a
    quarter of its width on the grid (about what a 2x cut keeps)."""
    ffn_width = max(spec.ffn_step, (key["mlp"] // 4) // spec.ffn_step * spec.ffn_step)
    out = {}
    for unit, width in ((HEADS, 0), (FFN, min(ffn_width, key["mlp"]))):
        probe = copy.deepcopy(model)
        unit.resize(probe, [width] * key["depth"])
        out[unit.kind] = (probe.eval(), width)
    return out


NOISY_ATTEMPTS = 2  # a table measured on a busy machine is measured once more before it is used as it is


def latency_table(model: nn.Module, spec: LatencySpec, input_size: tuple[int, ...], *, on_noise: str = "warn",
                  log=print) -> LatencyTable:
    """The cached table for this model shape and place, measured (and cached) on first use.

    A table measured on a busy machine (`LatencyTable.noisy`) is measured again once; if it is still noisy it
    is used with a warning (`on_noise: warn`) or refused with a one-line error (`on_noise: error`), and never
    cached, so the next run on a quiet machine measures a table worth keeping."""
    key = table_key(model, spec, input_size)
    path = cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
    if path.is_file():
        try:
            cached = LatencyTable(**json.loads(path.read_text()))
            if cached.key == key and not cached.noisy:
                log(f"[latency] reusing the table in {path}")
                return cached
        except (OSError, ValueError, TypeError):
            pass  # a damaged (or noisy) cache entry is measured again
    for attempt in range(1, NOISY_ATTEMPTS + 1):
        table = measure_table(model, spec, input_size, log=log)
        if not table.noisy:
            break
        if attempt < NOISY_ATTEMPTS:
            log(f"[latency] {table.noise_warning()}; measuring again")
    if table.noisy:
        if on_noise == "error":
            raise ConfigError(f"{table.noise_warning()}; stop other work and rerun, or set "
                              "prune.latency.on_noise: warn to plan with it anyway")
        log(f"[latency] warning: {table.noise_warning()}; not cached")
        return table
    from .io import write_json

    try:
        write_json(path, table.to_json())
    except OSError as e:  # a read-only home: the table is still used, just not kept
        log(f"[latency] could not cache the table in {path} ({e.strerror}); it will be measured again next time")
    return table
