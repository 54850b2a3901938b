"""The notes of one plan the search found: the search's own, then those of this choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memfit.devices import get_device
from memfit.plan.expandable import EXPANDABLE_NOTE
from memfit.plan.frontier import FrontierPoint, margin_note
from memfit.plan.host_bound import host_bound_note
from memfit.plan.known_misses import recomputed_convolution_note
from memfit.plan.model_state import host_note
from memfit.plan.settings import CONVOLUTION_MARGIN
from memfit.techniques import ExpandableSegments

if TYPE_CHECKING:
    from memfit.trace.estimate import StepTrace

__all__ = ["choice_notes"]


def choice_notes(
    search: Any,
    techniques: tuple[Any, ...],
    traced: StepTrace,
    frontier: Sequence[FrontierPoint],
) -> tuple[str, ...]:
    """``search.notes`` (a ``search_phases.Search``), then the notes of the plan ``techniques``
    (on top of ``search.first``, as ``traced``), each once: what it keeps in host memory, a
    faster plan inside the margin, recomputed convolutions, a step the CPU bounds, expandable
    segments."""
    settings = search.settings
    chosen_s = traced.profile.step_time_s
    found: list[str | None] = [
        host_note(traced, get_device(search.step.device), search.host),
        margin_note(frontier, chosen_s, settings.budget, settings.target) if chosen_s else None,
        recomputed_convolution_note(
            search.first + techniques, traced, settings.margin, CONVOLUTION_MARGIN
        ),
        host_bound_note(traced.record),
        EXPANDABLE_NOTE if any(isinstance(t, ExpandableSegments) for t in techniques) else None,
    ]
    notes = list(search.notes)
    notes += [n for n in dict.fromkeys(filter(None, found)) if n not in notes]
    return tuple(notes)
