"""The search's first phase after the unmodified trace: fusions that save memory at no cost.

The fused optimizer step (Adam and AdamW: one kernel instead of multi-tensor temporaries) and
Hugging Face's GELUs as one kernel go into every plan from here on, each only where its trace
shows it saves memory; a plan that fits with these alone is the answer.
"""

from __future__ import annotations

from typing import Any

from memfit.errors import MemfitError
from memfit.plan.frontier import FrontierPoint
from memfit.plan.plan import Plan
from memfit.profile import Phase
from memfit.structure.layers import fusable_activations
from memfit.techniques import FusedActivation, FusedOptimizer
from memfit.trace.estimate import StepTrace

__all__ = ["fuse_first", "FUSION_LABELS"]

FUSION_LABELS: dict[type, str] = {FusedOptimizer: "fused optimizer", FusedActivation: "fused GELU"}
"""How the plan's label names each fusion."""


def fuse_first(search: Any) -> Plan | None:
    """Fuse what saves memory at no cost into ``search.first`` (a ``search_phases.Search``,
    which calls this); the plan, if that alone fits."""
    fusions: list[tuple[str, Any]] = []
    if "fused_optimizer" in search.allow and _may_fuse(search.step.optimizer):
        fusions.append((FUSION_LABELS[FusedOptimizer], FusedOptimizer()))
    module = search.base.model.module
    fusable = fusable_activations(module) if "fused_activation" in search.allow else []
    if fusable:
        fusions.append((FUSION_LABELS[FusedActivation], FusedActivation(modules=tuple(fusable))))
    for name, fusion in fusions:
        search.report(f"tracing with the {name.removeprefix('fused ')} fused")
        try:
            fused = search.trace((fusion,))
        except MemfitError as error:  # e.g. an optimizer without a fused kernel
            search.drop(name, str(error))
            continue
        if isinstance(fusion, FusedOptimizer) and not _saves_in_step(search.base, fused):
            continue  # the user's optimizer is changed only where that saves memory
        search.first, search.base = search.first + (fusion,), fused
        search.first_label = " + ".join(filter(None, (search.first_label, name)))
        if search.fits(search.base):
            peak, step_s = search.base.profile.peak_reserved, search.base.profile.step_time_s
            point = FrontierPoint(search.first_label, peak, step_s or 0.0, chosen=True)
            return search.make((), search.base, [point])
    return None


def _saves_in_step(base: StepTrace, fused: StepTrace) -> bool:
    """Whether the fused optimizer step holds less than the multi-tensor one (the step's peak
    may lie elsewhere until other techniques bring the activations down)."""

    def step_peak(traced: StepTrace) -> int:
        events = traced.profile.timeline
        return max((e.allocated for e in events if e.phase is Phase.OPTIMIZER), default=0)

    return step_peak(fused) < step_peak(base)


def _may_fuse(optimizer: Any) -> bool:
    """Whether the optimizer may be Adam or AdamW without the fused kernel yet."""
    if isinstance(optimizer, str):
        name = optimizer.lower()
        return name.startswith("adam") and "fused" not in name
    return callable(optimizer)  # a factory: the trace tells (use_fused refuses other types)
