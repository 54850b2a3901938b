"""The last phase of an activation search: plans that fit once the allocator stops fragmenting.

A traced plan whose reserved peak is over its target while its allocated peak is under is kept
out by fragmentation: blocks the caching allocator holds but cannot hand to the requests that
come. With ``ExpandableSegments`` (PyTorch's ``expandable_segments:True``) the same step
reserves close to what it allocates. The planner traces the fastest such plans again with the
setting and takes the first that fits, when it is faster than the plan found without it (LLaMA-1B
at its full checkpointing's memory: six checkpointed blocks instead of seven, 172.8 against
175.5 ms predicted, ``bench/results/plan_phases.json``). A process-wide setting is worth
naming in a plan only for a faster step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memfit.errors import MemfitError
from memfit.plan.candidates import Candidate
from memfit.plan.verify import Verified
from memfit.techniques import ChunkedLoss, ExpandableSegments
from memfit.trace.alloc_conf import allocator_from_environment
from memfit.trace.estimate import StepTrace
from memfit.trace.settings import StepSettings

__all__ = ["EXPANDABLE_NOTE", "expandable_already", "with_expandable_segments"]

EXPANDABLE_NOTE = (
    "expandable segments: memfit.apply sets the CUDA caching allocator's "
    "expandable_segments:True for this process when it applies the plan (undo restores it); "
    "with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment before the "
    "process starts, the weights' segments grow in place too"
)

EXPANDABLE_GAIN = 0.005
"""How much faster than the plan found a plan must be to be taken with expandable segments: a
process-wide allocator setting is named only for a gain."""

EXPANDABLE_TRACES = 2
"""The most plans traced again with expandable segments in one search."""

Chosen = tuple[tuple[Any, ...], StepTrace]
Expanded = tuple[tuple[Any, ...], StepTrace, Candidate]  # techniques, trace, plan before


def with_expandable_segments(
    verified: Verified,
    chosen: Chosen | None,
    chunked: ChunkedLoss | None,
    trace: Callable[[tuple[Any, ...]], StepTrace],
    target_of: Callable[[tuple[Any, ...], StepTrace], int],
) -> Expanded | None:
    """The fastest traced plan that fits with expandable segments and beats ``chosen`` by
    ``EXPANDABLE_GAIN``, traced again with them (at most ``EXPANDABLE_TRACES``), with the
    candidate it was; else None."""
    best_s = _seconds(chosen[1]) if chosen is not None else float("inf")
    kept_out = []
    for candidate, traced in verified.traced:
        techniques = candidate.techniques(chunked)
        limit = target_of(techniques, traced)
        profile = traced.profile
        fragmented = profile.peak_reserved > limit >= profile.peak_allocated
        if fragmented and _seconds(traced) < best_s * (1 - EXPANDABLE_GAIN):
            kept_out.append((techniques, traced, candidate))
    kept_out.sort(key=lambda kept: _seconds(kept[1]))
    for techniques, _, candidate in kept_out[:EXPANDABLE_TRACES]:
        expanded = (*techniques, ExpandableSegments())
        try:
            traced = trace(expanded)
        except MemfitError:
            continue  # refused for this model: the plan found without it stands
        if traced.profile.peak_reserved <= target_of(expanded, traced):
            return expanded, traced, candidate
    return None


def expandable_already(step: StepSettings) -> bool:
    """Whether the step's allocator grows segments in place without the technique (the
    environment's ``PYTORCH_CUDA_ALLOC_CONF`` says so, or ``allocator=``): then every trace
    was simulated so and there is nothing to gain."""
    allocator = step.allocator or allocator_from_environment()[0]
    return allocator.expandable_segments


def _seconds(traced: StepTrace) -> float:
    return traced.profile.step_time_s or float("inf")
