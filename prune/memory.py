"""Peak memory of a piece of work: host resident set (Linux) and CUDA allocations.

Discovery reports it so users can size machines; benchmarks read it from the stage summaries.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch


def _reset_host_peak() -> bool:
    """Reset the kernel's high-water mark of this process's resident set (Linux `clear_refs` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _host_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _lifetime_peak_mb() -> float | None:
    """ru_maxrss (KiB on Linux): the peak since process start, an upper bound for the block."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def peak_memory(device: torch.device | str = "cpu") -> Iterator[dict]:
    """Yield a dict filled on exit with `host_rss_mb` (peak resident set during the block; since
    process start where the kernel cannot reset it, flagged by `host_since_start`) and, on CUDA,
    `cuda_allocated_mb` (peak tensor allocations on that device during the block)."""
    out: dict = {}
    reset = _reset_host_peak()
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        peak = _host_peak_mb() if reset else None
        if peak is None:
            peak = _lifetime_peak_mb()
        out["host_rss_mb"] = None if peak is None else round(peak, 1)
        out["host_since_start"] = not reset
        if cuda:
            out["cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
