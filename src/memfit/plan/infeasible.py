"""The error for a budget that no plan meets: how much is missing, and what would close it."""

from __future__ import annotations

from collections.abc import Sequence

from memfit.errors import BudgetInfeasibleError
from memfit.plan.candidates import Candidate
from memfit.profile import Category, Phase
from memfit.trace.estimate import StepTrace
from memfit.units import format_bytes

__all__ = ["infeasible_error"]


def infeasible_error(
    limit: int,
    target: int,
    base: StepTrace,
    traced_points: list[tuple[Candidate, StepTrace]],
    allow: Sequence[str],
    dropped: Sequence[str] = (),
) -> BudgetInfeasibleError:
    """No plan fits: what is missing, what would close the gap, and what was left out (the
    techniques and candidates that failed to trace, with their reasons)."""
    best = min((t.profile.peak_reserved for _, t in traced_points), default=0)
    cats = base.profile.by_category
    # gradients from the record: at a peak in forward, by_category holds none of them
    grads = sum(base.record.grad_bytes.values()) or cats.get(Category.GRAD, 0)
    states = cats.get(Category.PARAM, 0) + cats.get(Category.OPTIMIZER, 0) + grads
    return BudgetInfeasibleError(
        f"budget {format_bytes(limit)} cannot be met: the most memory-saving plan still needs "
        f"{format_bytes(best)} reserved ({format_bytes(best - target)} missing, with the "
        f"{format_bytes(limit - target)} safety margin); weights, gradients and optimizer "
        f"state alone take {format_bytes(states)}. What would close the gap: "
        f"{optimizer_hint(traced_points)}{_not_allowed(allow)}sharding across GPUs (--gpus N, "
        f"gpus= in Python); or a smaller batch." + "".join(f" ({note})" for note in dropped)
    )


_STATE_HINTS = {
    "offload_optimizer": "offloading optimizer state to the host (allow 'offload_optimizer')",
    "low_bit_optimizer": "low-bit optimizer state (allow 'low_bit_optimizer': it changes the math)",
}


def _not_allowed(allow: Sequence[str]) -> str:
    """The model-state techniques the user left out, each with what it does."""
    return "".join(f"{hint}, " for name, hint in _STATE_HINTS.items() if name not in allow)


def optimizer_hint(traced_points: list[tuple[Candidate, StepTrace]]) -> str:
    """A fused optimizer, when the smallest plan peaks in a multi-tensor step's temporaries."""
    if not traced_points:
        return ""
    profile = min((t.profile for _, t in traced_points), key=lambda p: p.peak_reserved)
    temporaries = profile.by_category.get(Category.TEMPORARY, 0)
    name = (profile.optimizer or "").lower()
    fused = "fused" in name or "fused optimizer" in profile.plan  # a FusedOptimizer in the plan
    if profile.peak_phase is not Phase.OPTIMIZER or fused or not name.startswith("adam"):
        return ""
    if temporaries < 0.02 * profile.peak_allocated:
        return ""
    return (
        f"a fused optimizer (optimizer='{name.split()[0]}-fused', i.e. "
        f"torch.optim.{'AdamW' if name.startswith('adamw') else 'Adam'}(..., fused=True): the "
        f"same update without the {format_bytes(temporaries)} of temporaries that {name}'s "
        f"step holds at the peak); "
    )
