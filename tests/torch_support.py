"""Skip markers for what an older supported torch (>= 2.6) cannot run on this CPU machine."""

from __future__ import annotations

import pytest
import torch

from memfit.errors import UnsupportedModelError
from memfit.trace.sharding import fake_process_group


def _fake_collectives_run() -> bool:
    try:
        with fake_process_group(2):
            return True
    except UnsupportedModelError:  # torch 2.6's and 2.9's fake process groups: no fake tensors
        return False


needs_fake_collectives = pytest.mark.skipif(
    not _fake_collectives_run(), reason="this torch's fake process group takes no fake tensors"
)
"""Sharded predictions (memfit refuses them on such a torch, with an error naming it)."""

needs_fsdp2_on_cpu = pytest.mark.skipif(
    not hasattr(torch.cpu.Stream, "record_event"),
    reason=f"FSDP2 on the CPU records events on CPU streams, which torch {torch.__version__} lacks",
)
"""A real FSDP2 job with gloo on the CPU (torch 2.6's FSDP2 runs on GPUs only)."""
