"""The interface through which a training step gives the guard direct micro-batch control.

memfit's ``TrainStep`` (from ``memfit.apply``) implements it; so can any user class. A plain
function ``step_fn(batch)`` works too (see ``memfit.guard.intercept``), but a step that
implements this protocol is cheaper to guard and has no restrictions on what it does between
backward and the optimizer step.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["MicroBatchStep", "is_micro_batch_step"]


@runtime_checkable
class MicroBatchStep(Protocol):
    """A training step split in two: gradients of one micro-batch, then the update.

    Attributes:
        model: the module being trained (its buffers are restored after a failed attempt, and
            ``no_sync`` is used when it is DistributedDataParallel).
        optimizer: the optimizer whose state is restored after a failed attempt.

    An optional ``grad_scaler`` attribute (``torch.amp.GradScaler`` or None) is read with
    ``getattr``; when present its scale and growth tracker are restored after a failed attempt.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def forward_backward(self, batch: Any, *, loss_scale: float) -> torch.Tensor:
        """Run forward and backward on ``batch``; gradients add to ``param.grad``.

        The loss is multiplied by ``loss_scale`` before ``backward`` (after any ``GradScaler``
        scaling: ``scaler.scale(loss * loss_scale).backward()``). Must not run collectives:
        under DDP run it inside ``model.no_sync()``, the guard syncs in ``optimizer_step``.

        Returns:
            The unscaled loss of this micro-batch, detached (a 0-dim tensor).
        """
        ...

    def optimizer_step(self) -> None:
        """Apply the update from the accumulated gradients, then clear them.

        This is where gradient all-reduce, unscaling, clipping, ``optimizer.step()``,
        ``scaler.update()``, the LR scheduler and ``zero_grad`` belong. It runs once per guarded
        step, after every rank's micro-batches succeeded. A step that leaves the gradients for
        later (gradient accumulation across calls) may do nothing here. Gradients left None
        (``zero_grad(set_to_none=True)``) or zeroed through ``optimizer.zero_grad`` /
        ``model.zero_grad`` cost the guard's next snapshot nothing.
        """
        ...


def is_micro_batch_step(step: object) -> bool:
    """True when ``step`` has ``forward_backward``, ``optimizer_step``, ``model``, ``optimizer``."""
    return (
        callable(getattr(step, "forward_backward", None))
        and callable(getattr(step, "optimizer_step", None))
        and isinstance(getattr(step, "model", None), nn.Module)
        and isinstance(getattr(step, "optimizer", None), torch.optim.Optimizer)
    )
