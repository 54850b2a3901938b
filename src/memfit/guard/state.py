"""Save everything a few trial training steps change, and put it back exactly.

Used by ``find_batch_size``: trials run real steps (the optimizer's state and the allocator's
cache must look like training), and afterwards the model, optimizer, gradients, grad scaler,
train/eval modes and random-number generators are as they were, also when a trial raised
(``memfit.step.kept_state``). Copies live in host memory: parameters, buffers and optimizer
state (16 bytes per parameter for AdamW in fp32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from memfit.step.kept_state import KeptState

__all__ = ["preserved_state"]


@contextmanager
def preserved_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    grad_scaler: Any | None = None,
) -> Iterator[None]:
    """Run the block, then restore the model, optimizer and RNG state of its start.

    Parameters and buffers keep their identity (values, dtypes and devices are put back in the
    same objects), so optimizers and hooks that hold them stay valid.
    """
    kept = KeptState(model, optimizer, grad_scaler)
    try:
        yield
    finally:
        kept.restore()
