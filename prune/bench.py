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
    """`{runner: {batch: {median_ms, p90_ms, p99_ms, mean_ms, images_per_s, repeats}}}` over `repeats` timed
    runs (`images_per_s` from the median): every round runs each contender once, starting from a different
    one each round, so order effects and noise hit all alike."""
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
                                 "p99_ms": float(np.percentile(ts, 99)) * 1e3, "mean_ms": statistics.fmean(ts) * 1e3,
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


def machine_info() -> dict:
    """What a latency depends on besides the model and runtime settings: library versions and the CPU."""
    import platform

    import timm

    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.lower().startswith("model name")), None)
    except OSError:
        pass
    return {"torch": torch.__version__, "onnxruntime": ort, "timm": timm.__version__,
            "cpu": cpu or platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


# timm's benchmark.py names (`model`, `infer_*`, `param_count` in millions, `infer_gmacs`), then prune's own
ROW_COLUMNS = ("model", "runtime", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
               "param_count", "infer_gmacs", "p50_ms", "p90_ms", "p99_ms", "repeats", "noisy",
               "torch", "onnxruntime", "timm", "cpu", "cpu_count", "threads", "device")


def result_rows(result: dict, contenders: dict[str, tuple[str, str]], input_shape, counts: dict[str, dict],
                noise: dict, machine: dict, runtimes: dict[str, dict] | None = None) -> list[dict]:
    """A `measure` result as one flat row per contender and batch size (`ROW_COLUMNS`), with timm's
    benchmark.py column names where they mean the same: `infer_step_time` is the mean time of one timed run
    in ms and `infer_samples_per_sec` the batch over it (timm's definitions: the mean, not the median),
    `param_count` millions of parameters, `infer_gmacs` billions of multiply-accumulates per image
    (prune's counter, `count_params_macs`); `p50_ms` (the median), `p90_ms` and `p99_ms` are percentiles of
    the same runs (with 20 runs p99 is close to the slowest). `contenders`: runner name -> (model, runtime);
    `counts`: model -> {params, macs} where known (not for an ONNX file given on its own); `machine`:
    `machine_info()`; `runtimes`: runtime -> its `threads` (intra-op threads; None: the runtime's own
    default, an empty cell) and `device`."""
    rows = []
    for name, per in result.items():
        model, runtime = contenders.get(name, (name, ""))
        c = counts.get(model) or {}
        for b, r in per.items():
            rows.append({
                "model": model, "runtime": runtime,
                "infer_samples_per_sec": round(int(b) * 1e3 / r["mean_ms"], 2), "infer_step_time": round(r["mean_ms"], 3),
                "infer_batch_size": int(b), "infer_img_size": int(input_shape[-1]),
                "param_count": round(c["params"] / 1e6, 4) if "params" in c else None,
                "infer_gmacs": round(c["macs"] / 1e9, 6) if "macs" in c else None,
                "p50_ms": round(r["median_ms"], 3), "p90_ms": round(r["p90_ms"], 3), "p99_ms": round(r["p99_ms"], 3),
                "repeats": r["repeats"], "noisy": bool(noise.get("noisy")), **machine,
                **(runtimes or {}).get(runtime, {})})
    return [{k: row.get(k) for k in ROW_COLUMNS} for row in rows]


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """`rows` as CSV (header `ROW_COLUMNS`; an unknown value is an empty cell), written atomically."""
    import csv

    from .io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS))
            w.writeheader()
            w.writerows(rows)


def load_any(target: str, **model_kwargs) -> tuple[str, object, tuple[int, ...]]:
    """What `prune bench` was pointed at: ("onnx", path, shape) or ("torch", model, shape)."""
    from .checkpoint import is_pruned_dir, load_pruned
    from .models import load_model

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
    if is_pruned_dir(p):
        model, structure = load_pruned(p)
        return "torch", model, tuple(structure["data_config"].get("input_size") or (3, *model.patch_embed.img_size))
    model, data_cfg, _ = load_model(target, pretrained=False, **model_kwargs)  # weights do not change latency
    return "torch", model, tuple(data_cfg.input_size)
