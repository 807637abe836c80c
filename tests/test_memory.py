import sys

import pytest

from tensorsim.core.memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keeping_freed_memory_applies_on_linux_and_allocation_still_works():
    import torch

    assert keep_freed_memory() is True
    blocks = [torch.ones(8_000_000) for _ in range(3)]  # 32 MB each: above glibc's mmap threshold
    assert all(float(b.sum()) == 8_000_000 for b in blocks)
    del blocks
    again = torch.zeros(8_000_000)  # reused heap memory still comes back zeroed by torch.zeros
    assert float(again.abs().sum()) == 0
