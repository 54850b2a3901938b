"""ApplyContext: what the appliers tell the training step about how to run it.

Some techniques change the model (checkpointing wraps forwards); others change how the step
calls the model and computes the loss (a chunked loss computes the LM head itself, so the model
must not receive the labels). Appliers write the second kind here; the training step reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memfit.errors import InvalidInputError

__all__ = ["ApplyContext", "LossFn", "BatchFn", "set_once"]

LossFn = Callable[[Any, Any], torch.Tensor]
"""``(output, batch) -> scalar loss``; ``batch`` is the batch as given, labels included."""

BatchFn = Callable[[Any], Any]
"""``batch -> model inputs``: what the model is called with."""


@dataclass
class ApplyContext:
    """How the training step must run once the techniques are applied.

    The step creates one context (with the user's ``loss_fn``, if any), passes it to
    ``apply_techniques``, and then, for each (micro-)batch::

        output = call_model(model, context.model_inputs(batch))
        loss = compute_loss(context.loss_fn, output, batch)   # the full batch, with labels

    Attributes:
        loss_fn: the loss; None means ``memfit.trace.step.default_loss`` (``output.loss``).
            ``ChunkedLoss`` sets it, and refuses to replace a loss the user gave.
        forward_batch: maps a batch to the model's inputs; None calls the model with the batch
            itself. ``ChunkedLoss`` sets it to drop the labels, so that the model does not
            compute a loss of its own on what are now hidden states.
        micro_batches: set by ``MicroBatch``: split each batch into this many micro-batches
            and accumulate gradients (None: one).
        precision: set by ``MixedPrecision``: the precision name the step runs in (None: as
            the step was configured).
        lean_autocast: set by ``LeanAutocast``: autocast without its weight cache, and
            forward under ``memfit.apply.lean_autocast.lean_saving``.
        recompute_products: set by ``FusedGatedMLP``: forward under ``lean_saving`` (at
            least for its gated products).
        fused_optimizer: set by ``FusedOptimizer``: the optimizer steps with its fused kernel
            (``memfit.apply.fused_optimizer.use_fused``).
    """

    loss_fn: LossFn | None = None
    forward_batch: BatchFn | None = None
    micro_batches: int | None = None
    precision: str | None = None
    lean_autocast: bool = False
    recompute_products: bool = False
    fused_optimizer: bool = False

    def model_inputs(self, batch: Any) -> Any:
        """What the model is called with for ``batch``."""
        return batch if self.forward_batch is None else self.forward_batch(batch)


def set_once(context: ApplyContext, flag: str, technique: str) -> Callable[[], None]:
    """Set the boolean ``flag`` of ``context`` for ``technique``; the returned undo clears it.

    Raises:
        InvalidInputError: the flag is set already (the plan has the technique twice).
    """
    if getattr(context, flag):
        raise InvalidInputError(f"the plan has {technique} twice; keep one")
    setattr(context, flag, True)
    return lambda: setattr(context, flag, False)
