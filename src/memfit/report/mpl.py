"""matplotlib, kept at arm's length: imported lazily, styled inside a context, never pyplot.

Figures are ``matplotlib.figure.Figure`` objects built directly (no pyplot state machine, no
backend switch), so rendering a report changes nothing global in the caller's process.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memfit.profile import Category, Phase
from memfit.units import GiB, KiB, MiB

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["style", "new_figure", "to_svg", "save_png", "byte_unit", "CATEGORY_COLORS"]

# Okabe & Ito's colour-blind-safe palette, one colour per category, the same in every view.
CATEGORY_COLORS = {
    Category.PARAM: "#0072B2",
    Category.BUFFER: "#56B4E9",
    Category.GRAD: "#009E73",
    Category.OPTIMIZER: "#E69F00",
    Category.ACTIVATION: "#D55E00",
    Category.TEMPORARY: "#CC79A7",
    Category.OTHER: "#999999",
}
CACHE_COLOR = "#D9D9D9"
OUTSIDE_COLOR = "#555555"
PHASE_COLORS = {
    Phase.FORWARD: "#DCEAF7",
    Phase.BACKWARD: "#FBE5D6",
    Phase.OPTIMIZER: "#E2F0D9",
}
LIMIT_COLOR = "#000000"
BUDGET_COLOR = "#C00000"

_STYLE: dict[str, Any] = {
    "font.size": 9,
    "font.family": "DejaVu Sans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "legend.frameon": False,
    "svg.fonttype": "none",  # text stays text: smaller files, selectable in the browser
    "svg.image_inline": True,
}


@contextmanager
def style() -> Iterator[None]:
    """memfit's plot style, in force only inside the block."""
    import matplotlib  # slow to import: only when a figure is drawn

    with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]
        yield


def new_figure(width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    """A figure with subplots, built without pyplot (call inside :func:`style`)."""
    from matplotlib.figure import Figure  # slow to import: only when a figure is drawn

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


def to_svg(fig: Figure, *, salt: str) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog; ids made unique by ``salt``)."""
    import matplotlib  # slow to import: only when a figure is drawn

    buffer = io.StringIO()
    with style(), matplotlib.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    start = text.find("<svg")
    svg = text[start:]
    # a fixed-size figure that scales with the page: keep the viewBox, let CSS set the width
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)
    return svg.replace("<svg", f'<svg role="img" data-figure="{salt}"', 1)


def save_png(fig: Figure, path: Path, *, dpi: int = 150) -> Path:
    """Write the figure as a PNG file."""
    with style():
        fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """The IEC unit that suits a range of values up to ``max_bytes``: (scale, name)."""
    for scale, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if max_bytes >= scale:
            return float(scale), name
    return 1.0, "B"
