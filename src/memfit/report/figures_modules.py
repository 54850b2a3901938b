"""Activation memory per module: which modules keep the most alive for backward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memfit.profile import Category, MemoryProfile
from memfit.report import mpl
from memfit.report.module_rows import fold_repeated
from memfit.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["modules_figure"]


def modules_figure(profile: MemoryProfile, *, top: int = 20) -> Figure | None:
    """Activation memory per module (own allocations, children excluded), largest first."""
    own = any(m.self_activation_bytes > 0 for m in profile.modules)
    mods = fold_repeated(
        (m for m in profile.modules if (m.self_activation_bytes if own else m.activation_bytes)),
        own=own,
    )
    value = (lambda m: m.self_activation_bytes) if own else (lambda m: m.activation_bytes)
    if not mods:
        return None
    shown, rest = mods[:top], mods[top:]
    scale, unit = mpl.byte_unit(value(shown[0]))
    with mpl.style():
        fig, ax = mpl.new_figure(9, 1.1 + 0.26 * len(shown))
        by_line = all(m.module_type == "source line" for m in shown)
        names = [
            _short(
                (
                    f"{m.label or '(model)'} ({m.module_type})"
                    if m.module_type and not by_line
                    else m.label
                )
                + (f" x{m.count}" if m.count > 1 else "")
            )
            for m in shown
        ]
        widths = [value(m) / scale for m in shown]
        ax.barh(range(len(shown)), widths, color=mpl.CATEGORY_COLORS[Category.ACTIVATION])
        ax.set_yticks(range(len(shown)), names, fontsize=8)
        ax.invert_yaxis()
        for i, m in enumerate(shown):
            ax.text(
                widths[i], i, f" {format_bytes(value(m), precision=1)}", va="center", fontsize=8
            )
        ax.set_xlim(0, max(widths) * 1.18)
        ax.set_xlabel(unit)
        where = "source line (innermost frame outside torch)" if by_line else "module"
        ax.set_title(
            f"Activation memory per {where} (xN: each of N alike), alive at the end of forward"
        )
        if rest:
            ax.text(
                0.99,
                0.01,
                f"top {len(shown)} of {len(mods)} rows; the others hold "
                f"{format_bytes(sum(value(m) * m.count for m in rest))}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="#444444",
            )
    return fig


def _short(text: str, width: int = 56) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
