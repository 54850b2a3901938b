"""The frontier of plans: predicted step time against peak memory, one point per plan.

The planner produces the points; this module only holds them and draws them. A plan is worth
considering only if no other plan is both smaller and faster: those are the Pareto-optimal
points, joined by a line in the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from memfit.errors import InvalidInputError
from memfit.report import mpl
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FrontierPoint", "pareto", "check_points", "frontier_figure"]


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
    def from_dict(cls, data: Mapping[str, Any]) -> FrontierPoint:
        try:
            return cls(
                label=str(data["label"]),
                peak_reserved=int(data["peak_reserved"]),
                step_time_s=float(data["step_time_s"]),
                chosen=bool(data.get("chosen", False)),
                measured=bool(data.get("measured", False)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(
                f"frontier point {dict(data)!r} is malformed ({error}); each needs label, "
                f"peak_reserved (bytes) and step_time_s"
            ) from error


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


def frontier_figure(points: Sequence[FrontierPoint], *, budget: int | None = None) -> Figure:
    """Predicted step time against peak memory; the chosen plan highlighted, anchors filled."""
    points = check_points(points)
    top = max([p.peak_reserved for p in points] + [budget or 0])
    scale, unit = mpl.byte_unit(top)
    slow = max(p.step_time_s for p in points)
    tscale, tunit = (1e3, "ms") if slow < 1 else (1.0, "s")
    with mpl.style():
        fig, ax = mpl.new_figure(9, 4)
        front = pareto(points)
        ax.plot(
            [p.peak_reserved / scale for p in front],
            [p.step_time_s * tscale for p in front],
            "-",
            color="#4C72B0",
            lw=1.2,
            label="frontier (no plan is smaller and faster)",
        )
        for measured in (False, True):
            group = [p for p in points if p.measured is measured and not p.chosen]
            if group:
                ax.plot(
                    [p.peak_reserved / scale for p in group],
                    [p.step_time_s * tscale for p in group],
                    "o",
                    ms=6,
                    mfc="#4C72B0" if measured else "white",
                    mec="#4C72B0",
                    label="measured (anchor)" if measured else "predicted",
                )
        for p in points:
            if p.chosen:
                ax.plot(
                    [p.peak_reserved / scale],
                    [p.step_time_s * tscale],
                    "*",
                    ms=16,
                    color=mpl.BUDGET_COLOR,
                    label=f"chosen: {p.label}",
                    zorder=5,
                )
        if len(points) <= 14:
            for p in points:
                ax.annotate(
                    p.label,
                    (p.peak_reserved / scale, p.step_time_s * tscale),
                    xytext=(6, 4),
                    textcoords="offset points",
                    fontsize=7.5,
                )
        if budget:
            ax.axvline(budget / scale, color=mpl.BUDGET_COLOR, ls="--", lw=1.2)
            ax.text(
                budget / scale,
                0.02,
                f" budget {format_bytes(budget)}",
                transform=ax.get_xaxis_transform(),
                color=mpl.BUDGET_COLOR,
                fontsize=8,
            )
        ax.set_xlim(0, top * 1.12 / scale)
        ax.set_ylim(0, slow * 1.15 * tscale)
        ax.set_xlabel(f"peak reserved memory ({unit})")
        ax.set_ylabel(f"step time ({tunit})")
        ax.set_title("Plans: memory against step time")
        ax.legend(loc="upper right", fontsize=8)
    return fig
