"""The frontier of plans: predicted step time against peak memory, one point per plan.

The planner produces the points and ``memfit.report`` draws them. A plan is worth considering
only if no other plan is both smaller and faster: those are the Pareto-optimal points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from memfit.errors import InvalidInputError
from memfit.json_fields import Fields
from memfit.units import format_bytes

if TYPE_CHECKING:
    from memfit.plan.candidates import Candidate
    from memfit.plan.verify import Verified
    from memfit.trace.estimate import StepTrace

__all__ = ["FrontierPoint", "pareto", "check_points", "plan_frontier", "margin_note"]


@dataclass(frozen=True, slots=True)
class FrontierPoint:
    """One plan on the frontier.

    Attributes:
        label: what the plan does, e.g. ``"checkpoint layers.* + bf16"``.
        peak_reserved: its predicted (or measured) reserved peak, in bytes.
        step_time_s: its predicted (or measured) time per training step.
        chosen: the plan the planner picked.
        measured: True when both numbers come from a real run (an anchor), not the models.
    """

    label: str
    peak_reserved: int
    step_time_s: float
    chosen: bool = False
    measured: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "frontier point") -> FrontierPoint:
        """Read a point written by ``to_dict``.

        Raises:
            InvalidInputError: a field missing or of the wrong type (the message names it).
        """
        f = Fields(data, where, "each needs label, peak_reserved (bytes) and step_time_s")
        f.unknown({"label", "peak_reserved", "step_time_s", "chosen", "measured"})
        return cls(
            label=f.get("label", "str"),
            peak_reserved=f.get("peak_reserved", "bytes"),
            step_time_s=f.get("step_time_s", "seconds"),
            chosen=f.get("chosen", "bool", False),
            measured=f.get("measured", "bool", False),
        )


def check_points(points: Sequence[FrontierPoint]) -> tuple[FrontierPoint, ...]:
    """Validate a frontier: positive numbers, at most one chosen plan."""
    for p in points:
        if p.peak_reserved < 0 or not p.step_time_s > 0:
            raise InvalidInputError(
                f"frontier point {p.label!r} has peak_reserved={p.peak_reserved} and "
                f"step_time_s={p.step_time_s}; both must be positive"
            )
    chosen = [p.label for p in points if p.chosen]
    if len(chosen) > 1:
        raise InvalidInputError(f"frontier has {len(chosen)} chosen plans ({chosen}); mark one")
    return tuple(points)


def pareto(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The points no other point beats on both memory and time, by increasing memory."""
    front: list[FrontierPoint] = []
    for p in sorted(points, key=lambda q: (q.peak_reserved, q.step_time_s)):
        if not front or p.step_time_s < front[-1].step_time_s:
            front.append(p)
    return front


def plan_frontier(
    candidates: list[Candidate],
    verified: Verified,
    chosen: tuple[tuple[Any, ...], StepTrace] | None,
    first: str = "",
) -> list[FrontierPoint]:
    """The frontier a plan shows: every candidate traced in full (the chosen one marked), and
    the Pareto front of the others as screening predicts them (memory and time corrected as the
    search corrected them; at most 12 points, evenly spread).

    A screened point that would beat the chosen plan on both memory and time is not shown: the
    search traces every such candidate it can (``verify.trace_fastest_fitting``), so one left
    is an estimate the traces contradicted, not a better plan.
    """
    traced_ids = {id(c) for c, _ in verified.traced}
    points = [
        FrontierPoint(c.label(first), int(verified.peak(c)), verified.step_s(c))
        for c in candidates
        if c.step_s > 0 and id(c) not in traced_ids
    ]
    if chosen is not None:
        best = chosen[1].profile
        points = [
            p
            for p in points
            if not (
                p.peak_reserved <= best.peak_reserved and p.step_time_s < (best.step_time_s or 0)
            )
        ]
    front = pareto(points)
    if len(front) > 12:  # keep the ends and an even spread between them
        step = (len(front) - 1) / 11
        front = [front[round(i * step)] for i in range(12)]
    for candidate, traced in verified.traced:
        is_chosen = chosen is not None and traced is chosen[1]
        front.append(
            FrontierPoint(
                candidate.label(first) + " (traced)",
                traced.profile.peak_reserved,
                traced.profile.step_time_s or candidate.step_s,
                chosen=is_chosen,
            )
        )
    return front


def margin_note(
    frontier: Sequence[FrontierPoint], chosen_s: float, budget: int, target: int
) -> str | None:
    """A note when a traced plan fits the budget but not the safety margin below it, and is
    more than 5% faster than the chosen one (a model whose blocks all checkpointed sit just at
    the budget: the next plan that fits the margin micro-batches, often much slower).

    The margin stays: the reserved peak is a prediction. The note says what it costs and how
    to take the faster plan at the user's own risk (``margin=0``).
    """
    faster = [
        p
        for p in frontier
        if p.label.endswith("(traced)")
        and target < p.peak_reserved <= budget
        and p.step_time_s < 0.95 * chosen_s
    ]
    if not faster:
        return None
    best = min(faster, key=lambda p: p.step_time_s)
    return (
        f"{best.label.removesuffix(' (traced)')} is predicted at "
        f"{format_bytes(best.peak_reserved)}, "
        f"inside the safety margin below the budget ({format_bytes(budget - target)}); this "
        f"plan is {chosen_s / best.step_time_s - 1:.0%} slower "
        f"({chosen_s * 1e3:.1f} against {best.step_time_s * 1e3:.1f} ms a step, predicted); "
        f"memfit.plan(..., margin=0) (memfit plan --margin 0) takes it, at the risk the "
        f"margin is kept against"
    )
