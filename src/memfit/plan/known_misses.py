"""Notes for plans of a kind whose predictions are known to miss, measured on a GPU.

Checkpointed convolutions: recomputing convolutions in backward puts their cuDNN workspaces
among the gradients, where the allocator simulation still places blocks differently from the
real run. ResNet-50's checkpointed plans measured 7-10% above their predicted reserved memory on
an H200, over their budgets (bench/results/plans_h200_run4.json); re-predicted with the 1x1
weight gradients' split-K partial sums, 5-10% (the plan at half the activations unchanged),
while its unmodified step is within 4.1%. Until that is modelled the plan says so and names the
fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memfit.techniques import Checkpoint
from memfit.trace.estimate import StepTrace

__all__ = ["recomputed_convolution_note"]

MEASURED_MISS = "5-10%"
"""How far above their prediction such plans' reserved peaks measured (ResNet-50, H200, against
this code's predictions)."""


def recomputed_convolution_note(techniques: Sequence[Any], traced: StepTrace) -> str | None:
    """A note when the plan checkpoints modules that run convolutions, else None."""
    checkpointed = [m for t in techniques if isinstance(t, Checkpoint) for m in t.modules]
    if not checkpointed:
        return None
    inside = tuple(f"{name}." for name in checkpointed)
    convolving = any(
        a.op.startswith("convolution") and (a.module in checkpointed or a.module.startswith(inside))
        for a in traced.trace.allocations.values()
    )
    if not convolving:
        return None
    return (
        f"this plan recomputes convolutions in backward: such plans' reserved memory measured "
        f"{MEASURED_MISS} above its prediction on an H200 (ResNet-50), which the budget's margin "
        f"does not cover; plan with memfit.plan(..., margin=0.1) (memfit plan --margin 0.1) "
        f"to keep to the budget"
    )
