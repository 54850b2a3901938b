"""Exhaustive search for the ideal packing of a handful of allocations (see ``packing``)."""

from __future__ import annotations

import numpy as np

__all__ = ["exact_search"]

Best = tuple[int, np.ndarray, str]
_MAX_NODES = 200_000  # bounds the search at well under a second


def exact_search(
    rest: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    load: int,
    best: Best,
) -> Best:
    """Branch and bound over "resting" placements, for a handful of allocations.

    Any packing can be pushed down until each allocation rests at 0 or on top of one it overlaps
    in time, without growing; so it suffices to place allocations in order of offset, each at 0
    or on the top of an already placed allocation it overlaps in time.
    """
    items = [int(i) for i in rest]
    best_height, best_offsets = best[0], best[1].copy()
    offsets = best[1].copy()
    placed: list[int] = []
    budget = [_MAX_NODES]

    def overlaps(a: int, b: int) -> bool:
        return bool(starts[a] < ends[b] and starts[b] < ends[a])

    def search(floor: int, height: int) -> bool:
        nonlocal best_height, best_offsets
        budget[0] -= 1
        if budget[0] < 0:
            return True  # searched long enough: keep the best found so far
        if len(placed) == len(items):
            if height < best_height:
                best_height, best_offsets = height, offsets.copy()
            return best_height <= load
        for i in items:
            if i in placed:
                continue
            spots = {0} | {int(offsets[j] + sizes[j]) for j in placed if overlaps(i, j)}
            for spot in sorted(s for s in spots if s >= floor):
                top = spot + int(sizes[i])
                if max(height, top) >= best_height:
                    break
                if any(
                    overlaps(i, j) and spot < offsets[j] + sizes[j] and offsets[j] < top
                    for j in placed
                ):
                    continue
                offsets[i] = spot
                placed.append(i)
                done = search(spot, max(height, top))
                placed.pop()
                if done:
                    return True
        return False

    search(0, 0)
    return best_height, best_offsets, "exact" if best_height < best[0] else best[2]
