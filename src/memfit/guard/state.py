"""Save everything a few trial training steps change, and put it back exactly.

Used by ``find_batch_size``: trials run real steps (the optimizer's state and the allocator's
cache must look like training), and afterwards the model, optimizer, gradients, grad scaler,
train/eval modes and random-number generators are as they were. Copies live in host memory:
parameters, buffers and optimizer state (16 bytes per parameter for AdamW in fp32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["preserved_state", "host_copy"]


def host_copy(value: Any) -> Any:
    """A deep copy with every tensor cloned to host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [host_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(host_copy(v) for v in value)
    return value


@contextmanager
def preserved_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    grad_scaler: Any | None = None,
) -> Iterator[None]:
    """Run the block, then restore the model, optimizer and RNG state of its start.

    Parameters keep their identity (values are copied back in place), so optimizers and hooks
    that hold them stay valid.
    """
    weights = host_copy(model.state_dict())
    grads = [(p, None if p.grad is None else host_copy(p.grad)) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    opt_state = host_copy(optimizer.state_dict()) if optimizer is not None else None
    scaler_state = host_copy(grad_scaler.state_dict()) if grad_scaler is not None else None
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            model.load_state_dict(weights)
            for p, g in grads:
                p.grad = None if g is None else g.to(p.device)
        for module, training in modes:
            module.training = training
        if optimizer is not None and opt_state is not None:
            optimizer.state.clear()
            optimizer.load_state_dict(opt_state)
        if grad_scaler is not None and scaler_state is not None:
            grad_scaler.load_state_dict(scaler_state)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
