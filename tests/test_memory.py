import sys

import pytest
import torch

from prune.memory import peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="host peak is read from /proc")
def test_peak_memory_sees_an_allocation_and_resets():
    with peak_memory() as quiet:
        pass
    with peak_memory() as busy:
        x = torch.ones(64, 2**20)  # 256 MiB, written so the pages are resident
        del x
    assert not busy["host_since_start"]
    assert busy["host_rss_mb"] - quiet["host_rss_mb"] > 200
    with peak_memory() as after:
        pass
    assert after["host_rss_mb"] < busy["host_rss_mb"] - 200  # the high-water mark was reset
