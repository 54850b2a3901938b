"""Thin a long memory timeline to a few thousand points without losing its shape.

Each bucket of consecutive points keeps its lowest and highest point (in order), so every spike
and dip survives, the global peak included; points where the phase changes are kept too, so phase
bands stay exact. This is the "min-max" decimation plotting libraries use for long series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["thin_indices"]


def thin_indices(
    values: Sequence[int] | np.ndarray,
    max_points: int,
    *,
    keep: Sequence[int] = (),
) -> np.ndarray:
    """Indices of at most about ``max_points`` points that keep every bucket's min and max.

    Args:
        values: the series (e.g. live bytes after each event).
        max_points: the target size; the result may exceed it by ``len(keep)``.
        keep: indices that must stay (phase boundaries).

    Returns:
        Sorted unique indices into ``values``, always including the first, the last and the
        index of the maximum.
    """
    series = np.asarray(values)
    n = len(series)
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    chosen = [0, n - 1, int(np.argmax(series))]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        part = series[lo:hi]
        chosen.append(lo + int(np.argmin(part)))
        chosen.append(lo + int(np.argmax(part)))
    chosen.extend(int(k) for k in keep if 0 <= k < n)
    return np.unique(np.asarray(chosen, dtype=np.int64))
