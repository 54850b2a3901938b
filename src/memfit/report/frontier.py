"""The frontier figure: the planner's points, predicted step time against peak memory.

The Pareto-optimal points (``memfit.plan.frontier.pareto``) are joined by a line. Only the
points a reader looks for are named (the chosen plan, the measured anchors and the unmodified
step); the others are in the table beside the figure. Names are placed where they cover no other
name and no point, the budget is a line with the memory past it shaded, and the legend sits
under the axes, off the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memfit.plan.frontier import FrontierPoint, check_points, pareto
from memfit.report import mpl
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["frontier_figure", "labelled"]

# where a name may go, in points from its marker: right, left, above, below and the diagonals
_OFFSETS = ((7, 5), (7, -11), (-7, 5), (-7, -11), (0, 10), (0, -15), (12, 14), (12, -20))
_MARKER_PX = 7.0  # half the side of the box kept clear around each point, in pixels


def labelled(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The points that get a name: the chosen plan, measured anchors and the unmodified step."""
    return [p for p in points if p.chosen or p.measured or p.label == "unmodified"]


def frontier_figure(points: Sequence[FrontierPoint], *, budget: int | None = None) -> Figure:
    """Predicted step time against peak memory; the chosen plan highlighted, anchors filled."""
    points = check_points(points)
    top = max([p.peak_reserved for p in points] + [budget or 0])
    scale, unit = mpl.byte_unit(top)
    slow = max(p.step_time_s for p in points)
    tscale, tunit = (1e3, "ms") if slow < 1 else (1.0, "s")
    xy = {id(p): (p.peak_reserved / scale, p.step_time_s * tscale) for p in points}
    with mpl.style():
        fig, ax = mpl.new_figure(9, 4.4)
        front = pareto(points)
        ax.plot(
            [xy[id(p)][0] for p in front],
            [xy[id(p)][1] for p in front],
            "-",
            color="#4C72B0",
            lw=1.2,
            label="frontier: no plan is smaller and faster",
        )
        for measured in (False, True):
            group = [p for p in points if p.measured is measured and not p.chosen]
            if group:
                ax.plot(
                    [xy[id(p)][0] for p in group],
                    [xy[id(p)][1] for p in group],
                    "o",
                    ms=6,
                    mfc="#4C72B0" if measured else "white",
                    mec="#4C72B0",
                    label="measured on a GPU (anchor)" if measured else "predicted",
                    gid="frontier-points",
                )
        for p in points:
            if p.chosen:
                ax.plot(
                    [xy[id(p)][0]],
                    [xy[id(p)][1]],
                    "*",
                    ms=16,
                    color=mpl.BUDGET_COLOR,
                    label="chosen plan",
                    zorder=5,
                    gid="frontier-points",
                )
        xmax = top * 1.12 / scale
        if budget:
            x = budget / scale
            ax.axvline(x, color=mpl.BUDGET_COLOR, ls="--", lw=1.2, gid="budget")
            ax.axvspan(x, xmax, color=mpl.BUDGET_COLOR, alpha=0.06, lw=0)
            ax.text(
                x,
                0.98,
                f"budget {format_bytes(budget)} ",
                transform=ax.get_xaxis_transform(),
                ha="right",
                va="top",
                color=mpl.BUDGET_COLOR,
                fontsize=8,
                gid="budget-label",
            )
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, slow * 1.18 * tscale)
        ax.set_xlabel(f"peak reserved memory ({unit})")
        ax.set_ylabel(f"step time ({tunit})")
        ax.set_title("Plans: memory against step time")
        fig.legend(loc="outside lower center", fontsize=8, ncols=4)
        _place_names(fig, ax, [(p.label, xy[id(p)]) for p in labelled(points)], list(xy.values()))
    return fig


def _place_names(
    fig: Any, ax: Any, names: list[tuple[str, tuple[float, float]]], dots: list[tuple[float, float]]
) -> None:
    """Annotate each name at the first offset where it overlaps no placed name, no point and
    stays inside the axes (the least-overlapping offset if none is free)."""
    from matplotlib.transforms import Bbox  # matplotlib is imported lazily (mpl.py)

    fig.draw_without_rendering()  # final layout: positions in pixels are now stable
    to_px = ax.transData.transform
    area = ax.get_window_extent()
    blocked = [
        Bbox.from_extents(x - _MARKER_PX, y - _MARKER_PX, x + _MARKER_PX, y + _MARKER_PX)
        for x, y in (to_px(d) for d in dots)
    ]
    for text, at in sorted(names, key=lambda item: item[1]):
        best: tuple[float, Any] | None = None
        for dx, dy in _OFFSETS:
            note = ax.annotate(
                text,
                at,
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                fontsize=7.5,
                gid="frontier-label",
            )
            box = note.get_window_extent()
            own = Bbox.from_extents(*(to_px(at) - _MARKER_PX), *(to_px(at) + _MARKER_PX))
            cost = sum(_overlap(box, b) for b in blocked if not _same(b, own))
            cost += box.width * box.height - _overlap(box, area)  # the part outside the axes
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note)
            else:
                note.remove()
            if cost == 0:
                break
        assert best is not None
        blocked.append(best[1].get_window_extent())


def _overlap(a: Any, b: Any) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, width) * max(0.0, height)


def _same(a: Any, b: Any) -> bool:
    return bool(abs(a.x0 - b.x0) < 1e-6 and abs(a.y0 - b.y0) < 1e-6)
