"""Notes for plans of a kind whose predictions are known to miss, measured on a GPU.

Checkpointed convolutions: ResNet-50's checkpointed plans measured 7-11% above their predicted
reserved memory on an H200 (bench/results/plans_h200_run4.json.gz, over their budgets; run 5, held
10% below them, 10.6% above and within). Their recordings (bench/results/
resnet50_plan_snapshots.md) replayed to the byte through the allocator simulation and allocated
what was predicted (within 0.06%); what differed was cuDNN weight-gradient workspaces (the
stem's split-K partial sums, strided 1x1s' split-K copies), enough for the stem's to miss a
cached 298 MiB block and map a new 300 MiB segment. Modelled since, the plans of run 6
(bench/results/plans_h200_run6_resnet50.json.gz) measured 1.4% and 3.4% above their predictions,
and with this margin run 7's three (plans_h200_run7_resnet50.json.gz) +1.4%, -2.5% and -7.9%, at
most 95.3% of their budgets. Such plans keep
``CONVOLUTION_MARGIN`` of the budget free (``PlanSettings.target_for``) and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memfit.plan.settings import MARGIN
from memfit.techniques import Checkpoint
from memfit.trace.estimate import StepTrace

__all__ = ["recomputed_convolution_note", "recomputes_convolutions"]

MEASURED_MISS = "1.4-3.4%"
"""How far above their prediction such plans' reserved peaks measured (ResNet-50, H200, run 6,
against this code's predictions)."""


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
