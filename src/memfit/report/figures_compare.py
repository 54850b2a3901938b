"""Figures for two runs: both timelines on one axis, categories side by side, module changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from memfit.report import mpl
from memfit.report.compare import ProfileDiff
from memfit.snapshot.thin import thin_indices
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["compare_timeline_figure", "compare_categories_figure", "compare_modules_figure"]

_COLORS = ("#4C72B0", "#D55E00")


def compare_timeline_figure(diff: ProfileDiff, *, max_points: int = 1200) -> Figure | None:
    """Both runs' live memory on one axis, the step stretched to the same length."""
    runs = [(p, n) for p, n in zip((diff.a, diff.b), diff.names, strict=True) if p.timeline]
    if not runs:
        return None
    top = max(max(e.allocated for e in p.timeline) for p, _ in runs)
    scale, unit = mpl.byte_unit(top)
    with mpl.style():
        fig, ax = mpl.new_figure(9, 3.4)
        for (profile, name), color in zip(runs, _COLORS, strict=False):
            alloc = np.array([e.allocated for e in profile.timeline], dtype=np.float64)
            keep = thin_indices(alloc, max_points)
            idx = np.array([profile.timeline[i].index for i in keep], dtype=np.float64)
            x = (idx - idx[0]) / max(1.0, idx[-1] - idx[0])
            ax.step(
                x,
                alloc[keep] / scale,
                where="post",
                color=color,
                lw=1.2,
                label=f"{name}: peak {format_bytes(profile.peak_allocated)}",
            )
            k = int(np.argmax(alloc[keep]))
            ax.plot([x[k]], [alloc[keep][k] / scale], "o", color=color, ms=5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, top * 1.12 / scale)
        ax.set_xlabel("progress through the step (each run stretched to the same length)")
        ax.set_ylabel(f"allocated ({unit})")
        ax.set_title("Live memory, both runs on one axis")
        fig.legend(loc="outside lower center", fontsize=8, ncols=2)  # off the data
    return fig


def compare_categories_figure(diff: ProfileDiff) -> Figure:
    """Bytes at the peak per category, A and B side by side."""
    cats = diff.categories
    top = max([max(x, y) for _, x, y in cats] + [1])
    scale, unit = mpl.byte_unit(top)
    with mpl.style():
        fig, ax = mpl.new_figure(9, 1.2 + 0.45 * max(1, len(cats)))
        pos = np.arange(len(cats))
        for j, (name, color) in enumerate(zip(diff.names, _COLORS, strict=True)):
            values = [(x if j == 0 else y) / scale for _, x, y in cats]
            ax.barh(pos + (j - 0.5) * 0.38, values, height=0.36, color=color, label=name)
        ax.set_yticks(pos, [c.value for c, _, _ in cats])
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title("At the peak, by category")
        fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return fig


def compare_modules_figure(diff: ProfileDiff, *, top: int = 15) -> Figure | None:
    """The modules whose memory changed most, growth in red and shrinkage in blue."""
    changed = [m for m in diff.modules if m.change][:top]
    if not changed:
        return None
    scale, unit = mpl.byte_unit(max(abs(m.change) for m in changed))
    with mpl.style():
        fig, ax = mpl.new_figure(9, 1.1 + 0.28 * len(changed))
        values = [m.change / scale for m in changed]
        ax.barh(
            range(len(changed)), values, color=["#C00000" if v > 0 else "#4C72B0" for v in values]
        )
        ax.set_yticks(range(len(changed)), [m.fqn or "(model)" for m in changed], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="#333333", lw=0.8)
        ax.set_xlabel(f"B - A ({unit})")
        ax.set_title("What grew (red) and shrank (blue), module by module")
    return fig
