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

if TYPE_CHECKING:
    from memfit.plan.candidates import Candidate
    from memfit.trace.estimate import StepTrace

__all__ = ["FrontierPoint", "pareto", "check_points", "plan_frontier"]


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
    traced_points: list[tuple[Candidate, StepTrace]],
    chosen: tuple[tuple[Any, ...], StepTrace] | None,
    first: str = "",
) -> list[FrontierPoint]:
    """The frontier a plan shows: the screened Pareto front (at most 12 points, evenly spread),
    and every candidate traced in full, the chosen one marked."""
    points = [
        FrontierPoint(c.label(first), c.peak_reserved, c.step_s) for c in candidates if c.step_s > 0
    ]
    front = pareto(points)
    if len(front) > 12:  # keep the ends and an even spread between them
        step = (len(front) - 1) / 11
        front = [front[round(i * step)] for i in range(12)]
    for candidate, traced in traced_points:
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
