"""Two views of one profile: the peak by category, and live memory over the step. Each returns a
matplotlib Figure (or None when there is no data).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from memfit.profile import Category, MemoryProfile, Phase
from memfit.report import mpl
from memfit.snapshot.thin import thin_indices
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["breakdown_figure", "timeline_figure"]

_LABEL_MIN_SHARE = 0.09  # write a segment's name inside it only if it is this wide


def _segments(profile: MemoryProfile) -> list[tuple[str, int, str]]:
    """(label, bytes, colour) of everything on the device at the peak, bottom first."""
    parts = [
        (c.value, profile.by_category.get(c, 0), mpl.CATEGORY_COLORS[c])
        for c in Category
        if profile.by_category.get(c, 0) > 0
    ]
    cache = profile.peak_reserved - profile.peak_allocated
    if cache > 0:
        parts.append(("allocator cache", cache, mpl.CACHE_COLOR))
    for name, value in profile.outside_pytorch.items():
        if value > 0:
            parts.append((name, value, mpl.OUTSIDE_COLOR))
    return parts


def _stacked_bar(ax: Axes, parts: list[tuple[str, int, str]], scale: float, labels: bool) -> None:
    left = 0.0
    total = sum(v for _, v, _ in parts) or 1
    for name, value, color in parts:
        width = value / scale
        hatch = "///" if name == "allocator cache" else None
        ax.barh(0, width, left=left, color=color, edgecolor="white", hatch=hatch, height=0.6)
        if labels and value / total >= _LABEL_MIN_SHARE:
            dark = color in (mpl.OUTSIDE_COLOR, mpl.CATEGORY_COLORS[Category.PARAM])
            ax.text(
                left + width / 2,
                0,
                f"{name}\n{format_bytes(value, precision=1)}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
        left += width
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.5)


def breakdown_figure(profile: MemoryProfile, *, budget: int | None = None) -> Figure:
    """The peak by category as a stacked bar, against the device's memory and the budget."""
    parts = _segments(profile)
    total = sum(v for _, v, _ in parts)
    limits = [v for v in (profile.device_memory, budget) if v]
    with mpl.style():
        rows = 2 if limits else 1
        fig, axes = mpl.new_figure(9, 1.35 * rows + 0.8, nrows=rows, ncols=1)
        axes = np.atleast_1d(axes)
        if limits:
            ax = axes[0]
            scale, unit = mpl.byte_unit(max(limits + [total]))
            _stacked_bar(ax, parts, scale, labels=False)
            ax.set_xlim(0, max(limits + [total]) * 1.04 / scale)
            ax.set_title("The step against the device")
            ax.set_xlabel(unit)
            if profile.device_memory:
                ax.axvline(profile.device_memory / scale, color=mpl.LIMIT_COLOR, lw=1.5)
                ax.text(
                    profile.device_memory / scale,
                    0.42,
                    f" {profile.device}\n {format_bytes(profile.device_memory)}",
                    va="top",
                    ha="right",
                    fontsize=8,
                )
            if budget:
                ax.axvline(budget / scale, color=mpl.BUDGET_COLOR, lw=1.5, ls="--")
                ax.text(
                    budget / scale,
                    -0.42,
                    f" budget {format_bytes(budget)}",
                    color=mpl.BUDGET_COLOR,
                    va="bottom",
                    ha="left",
                    fontsize=8,
                )
        ax = axes[-1]
        scale, unit = mpl.byte_unit(total)
        _stacked_bar(ax, parts, scale, labels=True)
        ax.set_xlim(0, total * 1.01 / scale if total else 1)
        ax.set_title(f"At the peak: {format_bytes(total)} on the device, by category")
        ax.set_xlabel(unit)
        handles = [
            mpl_patch(
                color,
                f"{name} {format_bytes(value, precision=1)}",
                hatch="///" if name == "allocator cache" else None,
            )
            for name, value, color in parts
        ]
        fig.legend(
            handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8
        )
    return fig


def mpl_patch(color: str, label: str, hatch: str | None = None) -> object:
    from matplotlib.patches import Patch  # slow to import: only when a figure is drawn

    return Patch(facecolor=color, edgecolor="white", hatch=hatch, label=label)


def timeline_figure(
    profile: MemoryProfile,
    *,
    budget: int | None = None,
    max_points: int = 1500,
    title: str = "Live memory over the step",
) -> Figure | None:
    """Live and reserved memory over the step, phases shaded, the peak annotated."""
    events = profile.timeline
    if not events:
        return None
    alloc = np.array([e.allocated for e in events], dtype=np.float64)
    keep = thin_indices(alloc, max_points, keep=_phase_changes(events))
    x = np.array([events[i].index for i in keep], dtype=np.float64)
    y = alloc[keep]
    reserved = np.array([events[i].reserved for i in keep], dtype=np.float64)
    top = max(float(reserved.max()), float(y.max()))
    near = [v for v in _limits(profile, budget) if v <= 2 * top]  # keep close limits in view
    top = max([top] + [float(v) for v in near])
    scale, unit = mpl.byte_unit(top)
    with mpl.style():
        fig, ax = mpl.new_figure(9, 3.6)
        _phase_bands(ax, [events[i].phase for i in keep], x)
        ax.fill_between(x, y / scale, step="post", color="#4C72B0", alpha=0.18, lw=0)
        ax.step(x, y / scale, where="post", color="#4C72B0", lw=1, label="allocated (live)")
        ax.step(
            x,
            reserved / scale,
            where="post",
            color="#555555",
            lw=1,
            ls="--",
            label="reserved (cached by the allocator)",
        )
        _limit_line(ax, profile, budget, top, scale)
        k = int(np.argmax(y))
        ax.plot([x[k]], [y[k] / scale], "o", color=mpl.BUDGET_COLOR, ms=5, zorder=5)
        _annotate_peak(ax, profile, x[k], y[k] / scale, right=x[k] < (x[0] + x[-1]) / 2)
        ax.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
        ax.set_ylim(0, top * 1.15 / scale)
        ax.set_ylabel(unit)
        ax.set_xlabel("allocation events")
        ax.set_title(title)
        fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return fig


def _limits(profile: MemoryProfile, budget: int | None) -> list[int]:
    return [v for v in (profile.usable_memory if profile.device_memory else 0, budget or 0) if v]


def _phase_changes(events: tuple) -> list[int]:
    return [i for i in range(1, len(events)) if events[i].phase is not events[i - 1].phase]


def _phase_bands(ax: Axes, phases: list[Phase], x: np.ndarray) -> None:
    span = (x[-1] - x[0]) or 1.0
    start = 0
    for i in range(1, len(phases) + 1):
        if i < len(phases) and phases[i] is phases[start]:
            continue
        phase = phases[start]
        end = x[i] if i < len(phases) else x[-1]
        color = mpl.PHASE_COLORS.get(phase)
        if color:
            ax.axvspan(x[start], end, color=color, lw=0, zorder=0)
            if (end - x[start]) / span > 0.06:
                ax.text(
                    (x[start] + end) / 2,
                    0.985,
                    phase.value,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=8,
                    color="#444444",
                )
        start = i


def _limit_line(
    ax: Axes, profile: MemoryProfile, budget: int | None, top: float, scale: float
) -> None:
    limits = []
    if profile.device_memory:
        limits.append((profile.usable_memory, f"{profile.device} usable", mpl.LIMIT_COLOR, "-"))
    if budget:
        limits.append((budget, "budget", mpl.BUDGET_COLOR, "--"))
    off = []
    for value, name, color, ls in limits:
        if value <= top * 1.12:
            ax.axhline(value / scale, color=color, ls=ls, lw=1.2)
            ax.text(
                1.0,
                value / scale,
                f"{name} {format_bytes(value)} ",
                transform=ax.get_yaxis_transform(),
                ha="right",
                va="bottom",
                color=color,
                fontsize=8,
            )
        else:
            off.append(f"{name} {format_bytes(value)}")
    if off:
        ax.set_title(
            "above the chart: " + ", ".join(off),
            loc="right",
            fontsize=8,
            fontweight="normal",
            color="#444444",
        )


def _annotate_peak(ax: Axes, profile: MemoryProfile, x: float, y: float, right: bool) -> None:
    where = profile.peak_phase.value + (f" in {profile.peak_module}" if profile.peak_module else "")
    lines = [f"peak {format_bytes(profile.peak_allocated)} allocated ({where})"]
    cats = sorted(profile.by_category.items(), key=lambda kv: -kv[1])[:4]
    lines.append(", ".join(f"{c.value} {format_bytes(v, precision=1)}" for c, v in cats))
    groups: dict[str, int] = {}  # identical lines are counted, not repeated
    for t in profile.alive_at_peak[:8]:
        origin = t.module or t.op
        shape = f" {t.dtype}{list(t.shape)}" if t.shape else ""
        line = f"{format_bytes(t.num_bytes, precision=1)} {t.category.value}{shape}" + (
            f" from {origin[:40]}" if origin else ""
        )
        groups[line] = groups.get(line, 0) + 1
    for line, count in list(groups.items())[:3]:
        lines.append(f"{count} x {line}" if count > 1 else line)
    ax.annotate(
        "\n".join(lines),
        (x, y),
        xytext=(12 if right else -12, -8),
        textcoords="offset points",
        ha="left" if right else "right",
        va="top",
        fontsize=8,
        bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "#999999", "alpha": 0.95},
        arrowprops={"arrowstyle": "-", "color": "#999999"},
        zorder=6,
    )
