"""Record PyTorch's CUDA memory history for a block of code, then switch it off again."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

__all__ = ["record_memory_history"]

log = logging.getLogger("memfit.guard")


@contextlib.contextmanager
def record_memory_history(max_entries: int = 100_000) -> Iterator[bool]:
    """Keep a trace of CUDA allocations (with stacks) inside the block.

    With ``OOMGuard(..., dump_snapshot_dir=...)`` inside this block, every out-of-memory error
    leaves a snapshot that pytorch.org/memory_viz turns into a timeline of who held what.
    Recording costs host memory (``max_entries`` events) and some time per allocation.

    Args:
        max_entries: events kept (oldest dropped first).

    Yields:
        True when recording, False without CUDA (the block then runs unrecorded).
    """
    if not torch.cuda.is_available():
        log.info("memfit.guard: no CUDA device; memory history is not recorded")
        yield False
        return
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        yield True
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
