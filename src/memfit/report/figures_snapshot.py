"""The fragmentation view of a recorded run: floor, ideal packing, reserved, and predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memfit.report import mpl
from memfit.snapshot.fragmentation import Fragmentation
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["fragmentation_figure"]


def fragmentation_figure(frag: Fragmentation) -> Figure:
    """Horizontal bars, from the floor (live bytes) up to what the allocator reserved."""
    rows: list[tuple[str, int, str]] = [
        ("live peak (the floor)", frag.live_peak, "#4C72B0"),
        ("ideal packing (any allocator's limit)", frag.ideal, "#009E73"),
        (f"reserved, as run ({frag.recorded_settings})", frag.reserved_peak, "#7F7F7F"),
    ]
    if frag.simulated_reserved is not None:
        rows.append(("simulated, as run", frag.simulated_reserved, "#BFBFBF"))
    for p in frag.predictions:
        rows.append((f"simulated, {p.setting}", p.peak_reserved, "#9DC3E6"))
    scale, unit = mpl.byte_unit(max(v for _, v, _ in rows))
    with mpl.style():
        fig, ax = mpl.new_figure(9, 1.0 + 0.38 * len(rows))
        ax.barh(
            range(len(rows)),
            [v / scale for _, v, _ in rows],
            color=[c for _, _, c in rows],
            height=0.65,
        )
        ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=8)
        ax.invert_yaxis()
        for i, (_, value, _) in enumerate(rows):
            extra = ""
            if i > 0 and frag.live_peak:
                extra = f"  (+{100 * (value / frag.live_peak - 1):.1f}% over the floor)"
            ax.text(value / scale, i, f" {format_bytes(value)}{extra}", va="center", fontsize=8)
        ax.axvline(frag.live_peak / scale, color="#4C72B0", ls=":", lw=1)
        ax.set_xlim(0, max(v for _, v, _ in rows) * 1.45 / scale)
        ax.set_xlabel(unit)
        ax.set_title("Fragmentation: what the allocator reserved against what was needed")
    return fig
