"""Several processes (`accelerate launch`): who does what, and sums across processes.

With one process every helper is the identity, so single-process code paths are unchanged.
"""

from __future__ import annotations

import torch


def state():
    """accelerate's process state. `cpu=True` without a GPU: that is what makes processes started by
    `accelerate launch --multi_gpu` / `torchrun` on a CPU-only machine join one gloo group (with the default
    the state would say 'one process' in each of them, and every process would do all the work)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return state().is_main_process


def world() -> int:
    return state().num_processes


def barrier() -> None:
    state().wait_for_everyone()


def device() -> torch.device:
    """This process's device: its GPU under `accelerate launch` on GPUs, else the CPU (or the one GPU)."""
    return state().device


def shard(items: list) -> list:
    """This process's share of `items`, interleaved (process i takes items i, i + n, ...)."""
    s = state()
    return list(items)[s.process_index::s.num_processes]


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all processes (every process gets it), in `t`'s dtype and device."""
    if world() == 1:
        return t
    from accelerate.utils import reduce

    return reduce(t.detach().to(device()).contiguous(), reduction="sum").to(t.device, t.dtype)


def gather_lists(items: list) -> list:
    """Every process's list, concatenated in process order."""
    if world() == 1:
        return list(items)
    from accelerate.utils import gather_object

    return list(gather_object(list(items)))
