"""One self-contained HTML page: inline SVG figures, inline CSS, no script, nothing fetched."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memfit import __version__
from memfit.report import mpl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["View", "Stat", "render_page"]


@dataclass(frozen=True)
class View:
    """One section of the report: a figure (or a note saying why there is none) and a caption.

    Attributes:
        key: a short id, also the PNG file name (``timeline`` -> ``timeline.png``).
        title: the section heading.
        figure: the matplotlib figure, or None when the data for it is missing.
        caption: how to read the figure (plain text).
        note: shown instead of the figure when ``figure`` is None (plain text).
        table: extra HTML shown under the figure (already escaped by its maker).
    """

    key: str
    title: str
    figure: Figure | None
    caption: str = ""
    note: str = ""
    table: str = ""


@dataclass(frozen=True)
class Stat:
    """A headline number at the top of the page."""

    label: str
    value: str
    tone: str = ""  # "good", "bad" or "" (neutral)


_CSS = """
:root{--fg:#1b1b1b;--muted:#5b5b5b;--line:#e2e2e2;--good:#0a7a38;--bad:#b3001b;--bg:#fafafa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{max-width:1040px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:18px;margin:0 0 6px}
.sub{color:var(--muted);margin:0 0 16px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;
margin:0 0 12px}
.stat{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.stat b{display:block;font-size:19px}.stat span{color:var(--muted);font-size:13px}
.stat.good{border-color:var(--good)}.stat.good b{color:var(--good)}
.stat.bad{border-color:var(--bad)}.stat.bad b{color:var(--bad)}
.verdict{font-weight:600;margin:0 0 12px}
.verdict.good{color:var(--good)}.verdict.bad{color:var(--bad)}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;margin:0 0 16px;font-size:14px}
nav a{color:#0b57d0;text-decoration:none}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px;margin:0 0 16px}
.caption{color:var(--muted);margin:0 0 10px;font-size:14px}
figure{margin:0}figure svg{width:100%;height:auto;display:block}
.note{background:#fff8e1;border:1px solid #f3d37a;border-radius:6px;padding:10px 12px;margin:0}
table{border-collapse:collapse;font-size:13px;margin:10px 0 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:right}
th:first-child,td:first-child{text-align:left}
details{margin:8px 0 0}summary{cursor:pointer;color:#0b57d0;font-size:14px}
ul.warn{color:#8a5a00;font-size:14px}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


def render_page(
    *,
    title: str,
    subtitle: str,
    stats: Sequence[Stat],
    verdict: tuple[str, str],
    views: Sequence[View],
    warnings: Sequence[str] = (),
) -> str:
    """The report page as one HTML string.

    Args:
        title: the page heading.
        subtitle: one line under it (model, device, settings).
        stats: headline numbers, shown as tiles.
        verdict: (text, tone) where tone is "good", "bad" or "".
        views: the sections, in order.
        warnings: shown as a list under the verdict.
    """
    esc = html.escape
    tiles = "".join(
        f'<div class="stat {esc(s.tone)}"><b>{esc(s.value)}</b><span>{esc(s.label)}</span></div>'
        for s in stats
    )
    nav = "".join(f'<a href="#view-{esc(v.key)}">{esc(v.title)}</a>' for v in views)
    warn = ""
    if warnings:
        warn = '<ul class="warn">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
    body = "\n".join(_section(v) for v in views)
    text, tone = verdict
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>
<div class="stats">{tiles}</div>
<p class="verdict {esc(tone)}">{esc(text)}</p>{warn}
<nav>{nav}</nav>
{body}
<footer>Made by memfit {esc(__version__)}. This file is self-contained: it loads nothing from
the network.</footer>
</main></body></html>
"""


def _section(view: View) -> str:
    esc = html.escape
    if view.figure is not None:
        inner = f"<figure>{mpl.to_svg(view.figure, salt=view.key)}</figure>"
    else:
        inner = f'<p class="note">{esc(view.note or "No data for this view.")}</p>'
    caption = f'<p class="caption">{esc(view.caption)}</p>' if view.caption else ""
    return (
        f'<section class="view" id="view-{esc(view.key)}" data-view="{esc(view.key)}">'
        f"<h2>{esc(view.title)}</h2>{caption}{inner}{view.table}</section>"
    )
