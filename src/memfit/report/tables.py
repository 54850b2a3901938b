"""Aligned plain-text tables: the terminal face of every memfit command."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    align: str | None = None,
    indent: str = "",
) -> str:
    """Lay out rows in columns, a rule under the header.

    Args:
        headers: one title per column.
        rows: cells, converted with ``str``.
        align: one letter per column, ``l`` or ``r``; default: first column left, others right.
        indent: prefix of every line.

    Returns:
        The table, lines joined by newlines, without a trailing newline.
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells; the header has {len(headers)}")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])
