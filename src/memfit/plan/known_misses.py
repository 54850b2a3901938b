"""Notes for plans of a kind whose predictions are known to miss, measured on a GPU.

Checkpointed convolutions: recomputing convolutions in backward puts their cuDNN workspaces
among the gradients, where the allocator simulation still places blocks differently from the
real run. ResNet-50's checkpointed plans measured 7-10% above their predicted reserved memory on
an H200, over their budgets (bench/results/plans_h200_run4.json); re-predicted with the 1x1
weight gradients' split-K partial sums, 5-10% (the plan at half the activations unchanged),
while its unmodified step is within 4.1%. Until that is modelled such plans keep
``CONVOLUTION_MARGIN`` of the budget free (``PlanSettings.target_for``) and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memfit.plan.settings import MARGIN
from memfit.techniques import Checkpoint
from memfit.trace.estimate import StepTrace

__all__ = ["recomputed_convolution_note", "recomputes_convolutions"]

MEASURED_MISS = "5-10%"
"""How far above their prediction such plans' reserved peaks measured (ResNet-50, H200, against
this code's predictions)."""


def recomputes_convolutions(techniques: Sequence[Any], traced: StepTrace) -> bool:
    """Whether the plan checkpoints modules that run convolutions (as ``traced`` shows)."""
    checkpointed = [m for t in techniques if isinstance(t, Checkpoint) for m in t.modules]
    if not checkpointed:
        return False
    inside = tuple(f"{name}." for name in checkpointed)
    return any(
        a.op.startswith("convolution") and (a.module in checkpointed or a.module.startswith(inside))
        for a in traced.trace.allocations.values()
    )


def recomputed_convolution_note(
    techniques: Sequence[Any], traced: StepTrace, margin: float | None, kept_free: float
) -> str | None:
    """A note when the plan checkpoints modules that run convolutions, else None.

    ``margin``: the user's (None: memfit's, which kept ``kept_free`` of the budget free for
    this plan).
    """
    if not recomputes_convolutions(techniques, traced):
        return None
    measured = (
        f"this plan recomputes convolutions in backward: such plans' reserved memory measured "
        f"{MEASURED_MISS} above its prediction on an H200 (ResNet-50)"
    )
    if margin is None:
        return (
            f"{measured}, so it was planned {kept_free:.0%} below the budget instead of "
            f"{MARGIN:.0%} (memfit.plan(..., margin=X), memfit plan --margin X, sets another)"
        )
    if margin >= kept_free:
        return None
    return (
        f"{measured}, more than margin={margin:g} covers; plan with memfit.plan(..., "
        f"margin={kept_free:g}) (memfit plan --margin {kept_free:g}) to keep to the budget"
    )
