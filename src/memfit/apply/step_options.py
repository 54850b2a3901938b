"""Appliers of the techniques that change how the step runs, not the model.

``MicroBatch`` and ``MixedPrecision`` leave the model alone: their appliers check the value and
write it to the ``ApplyContext``, where the training step reads it. Having appliers for them
lets ``apply_techniques`` take a whole plan.
"""

from __future__ import annotations

import warnings

from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.precision import Precision
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.structure.layers import batch_statistics
from memfit.techniques import MicroBatch, MixedPrecision

__all__ = ["apply_micro_batch", "apply_mixed_precision"]


@register_applier(MicroBatch)
def apply_micro_batch(model: nn.Module, technique: MicroBatch, context: ApplyContext) -> UndoFn:
    """Set ``context.micro_batches``; the step splits batches and accumulates gradients.

    Known limitations:
        Splitting and loss scaling are the training step's; see ``MicroBatch``.

    Raises:
        InvalidInputError: ``n`` is not a positive integer, or the plan has two MicroBatch.
    """
    if isinstance(technique.n, bool) or not isinstance(technique.n, int) or technique.n < 1:
        raise InvalidInputError(
            f"MicroBatch(n={technique.n!r}): n must be an integer >= 1 (1 = no splitting)"
        )
    if context.micro_batches is not None:
        raise InvalidInputError(
            f"the plan has two MicroBatch techniques (n={context.micro_batches} and "
            f"n={technique.n}); keep one"
        )
    if technique.n == 1:
        warnings.warn("MicroBatch(n=1) has no effect: batches are not split", stacklevel=3)
    shared = batch_statistics(model)
    if technique.n > 1 and shared:
        warnings.warn(
            f"MicroBatch(n={technique.n}) on a model with BatchNorm in training mode "
            f"({len(shared)} layers, e.g. {shared[0]!r}): each micro-batch is normalised with "
            f"its own statistics, so the update is not the full batch's (memfit.plan leaves "
            f"micro-batching out for such models)",
            stacklevel=3,
        )
    context.micro_batches = technique.n

    def undo() -> None:
        context.micro_batches = None

    return undo


@register_applier(MixedPrecision)
def apply_mixed_precision(
    model: nn.Module, technique: MixedPrecision, context: ApplyContext
) -> UndoFn:
    """Set ``context.precision`` (a canonical name such as ``"bf16-mixed"``).

    Known limitations:
        Autocast, weight casting and loss scaling are the training step's.

    Raises:
        InvalidInputError: unknown precision (the message lists the allowed ones), or the
            plan has two MixedPrecision.
    """
    name = Precision.parse(technique.precision).name
    if context.precision is not None:
        raise InvalidInputError(
            f"the plan has two MixedPrecision techniques ({context.precision!r} and "
            f"{technique.precision!r}); keep one"
        )
    context.precision = name

    def undo() -> None:
        context.precision = None

    return undo
