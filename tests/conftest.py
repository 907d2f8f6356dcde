"""Shared pytest fixtures."""

from __future__ import annotations

import os

# As train.py and finetune.py do (hyenadna/runtime.py): PyTorch reads this at its first CPU
# allocation, so it is set before torch is imported; start_run warns where it did not take.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from two, and a busy CI box makes two thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
