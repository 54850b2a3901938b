"""The frontier figure: the planner's points, predicted step time against peak memory.

The Pareto-optimal points (``memfit.plan.frontier.pareto``) are joined by a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from memfit.plan.frontier import FrontierPoint, check_points, pareto
from memfit.report import mpl
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["frontier_figure"]


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
