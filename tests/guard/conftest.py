"""The guard's CPU tests train tiny models step by step: one thread runs them fastest (on a busy
2-core machine, two OpenMP threads per tiny kernel made them 20 times slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
