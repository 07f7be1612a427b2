"""Latency and throughput of models (PyTorch eager and onnxruntime), measured fairly: warm-up, then
repeated runs where every contender runs once per round, alternating, so machine noise hits all alike."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError


def torch_runner(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    model = model.eval()

    def run(x):
        with torch.inference_mode():
            return model(x)
    return run


def ort_runner(path: str | Path, threads: int | None = None, provider: str = "CPUExecutionProvider"):
    """Run an ONNX file with one provider; the numpy copy of each input is made once, outside the timing."""
    from .export import ort_session

    sess = ort_session(path, threads, [provider])
    name = sess.get_inputs()[0].name
    arrays: dict[int, np.ndarray] = {}

    def run(x):
        a = arrays.get(id(x))
        if a is None:
            a = arrays[id(x)] = x.numpy().astype(np.float32)
        return sess.run(None, {name: a})
    return run


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def measure(runners: dict[str, Callable], input_shape: tuple[int, ...], batch_sizes=(1, 32), warmup: int = 3,
            repeats: int = 20, seed: int = 0) -> dict:
    """`{runner: {batch: {median_ms, p90_ms, images_per_s}}}`: every round runs each contender once,
    starting from a different one each round, so order effects and noise hit all alike."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict] = {name: {} for name in runners}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=g)
        for _ in range(warmup):
            for run in runners.values():
                run(x)
        times = {name: [] for name in runners}
        names = list(runners)
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                run = runners[name]
                t = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t)
        for name, ts in times.items():
            med = statistics.median(ts)
            out[name][str(b)] = {"median_ms": med * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3,
                                 "images_per_s": b / med, "repeats": repeats}
    return out


class CpuWatch:
    """How much of the machine's CPU time other processes used while this one measured (Linux `/proc/stat`
    against this process's own CPU time): a benchmark sharing its cores with other work is noise."""

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        self.end = self._read()

    @staticmethod
    def _read():
        busy = None
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()

    def other_share(self) -> float | None:
        """Share of all cores' time that other processes were busy during the watch (None where unknown)."""
        (b0, own0, w0), (b1, own1, w1) = self.start, self.end
        if b0 is None or b1 is None or w1 <= w0:
            return None
        return max(0.0, ((b1 - b0) - (own1 - own0)) / ((w1 - w0) * (os.cpu_count() or 1)))


NOISY_SPREAD = 1.25  # p90 / median above this (and NOISY_SPREAD_MS apart): the runs of one contender disagree
NOISY_SPREAD_MS = 0.25  # sub-millisecond runs jitter by a few tenths of a millisecond on any machine
NOISY_OTHERS = 0.10  # other processes busy for more than this share of the cores


def noise_report(result: dict, other_share: float | None) -> dict:
    """Whether a `measure` result is trustworthy: the worst p90/median spread, the other processes' CPU
    share, and the reasons it is flagged (empty: not noisy)."""
    spreads = {f"{name} b{b}": r["p90_ms"] / r["median_ms"] for name, per in result.items() for b, r in per.items()
               if r["p90_ms"] - r["median_ms"] > NOISY_SPREAD_MS}
    worst = max(spreads, key=spreads.get) if spreads else None
    reasons = []
    if worst is not None and spreads[worst] > NOISY_SPREAD:
        reasons.append(f"p90 is {spreads[worst]:.2f}x the median ({worst})")
    if other_share is not None and other_share > NOISY_OTHERS:
        reasons.append(f"other processes used {other_share:.0%} of the CPU time during the measurement")
    return {"noisy": bool(reasons), "reasons": reasons, "max_spread": spreads.get(worst) if worst else None,
            "other_cpu_share": other_share}


def measure_until_stable(runners: dict[str, Callable], input_shape, batch_sizes=(1, 32), warmup: int = 3,
                         repeats: int = 20, max_rounds: int = 5, tolerance: float = 0.03) -> tuple[dict, dict]:
    """`measure` under a `CpuWatch`, repeated (up to `max_rounds`) until no median moves more than
    `tolerance` from one round to the next; returns the last result and its `noise_report` (with the rounds)."""
    previous, rounds = None, 0
    while True:
        rounds += 1
        with CpuWatch() as watch:
            result = measure(runners, input_shape, batch_sizes, warmup, repeats, seed=rounds - 1)
        moved = None if previous is None else max(
            abs(result[n][b]["median_ms"] / previous[n][b]["median_ms"] - 1) for n in result for b in result[n])
        if moved is not None and moved <= tolerance or rounds >= max_rounds:
            break
        previous = result
    report = noise_report(result, watch.other_share())
    report["rounds"] = rounds
    if moved is not None and moved > tolerance:
        report["noisy"] = True
        report["reasons"].append(f"medians still moved {moved:.0%} between the last two of {rounds} rounds")
    return result, report


def threads_info() -> dict:
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def load_any(target: str, **model_kwargs) -> tuple[str, object, tuple[int, ...]]:
    """What `prune bench` was pointed at: ("onnx", path, shape) or ("torch", model, shape)."""
    from .models import load_model
    from .pruning import load_pruned

    p = Path(target).expanduser()
    if p.suffix == ".onnx":
        if not (p.exists() or p.is_symlink()):
            raise ConfigError(f"ONNX file {p} does not exist")
        from .export import ort_session
        from .io import check_onnx

        check_onnx(p)  # before onnxruntime opens it: a model, its external data inside its folder
        try:
            shape = ort_session(p).get_inputs()[0].shape[1:]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
            raise ConfigError(f"{p} is not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None
        if not all(isinstance(d, int) for d in shape):
            raise ConfigError(f"{p}: only the batch axis may be dynamic (input shape {shape})")
        return "onnx", p, tuple(shape)
    if (p / "structure.json").is_file():
        model, structure = load_pruned(p)
        return "torch", model, tuple(structure["data_config"].get("input_size") or (3, *model.patch_embed.img_size))
    model, data_cfg, _ = load_model(target, pretrained=False, **model_kwargs)  # weights do not change latency
    return "torch", model, tuple(data_cfg.input_size)
