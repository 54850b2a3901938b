"""Ideal packing: the least memory any allocator could use for a known set of allocations.

Given every allocation of a run as a size and a lifetime ``[start, end)`` (in event order), place
each at an address offset so that no two allocations that are alive at the same time overlap,
and make the arena (the highest ``offset + size``) as small as possible. This is the *dynamic
storage allocation* (DSA) problem with all lifetimes known in advance: an online allocator such as
PyTorch's caching allocator cannot do better, because it has to choose each address without
knowing the future.

Bounds:
    * No packing is below the **live peak** ("load"): the most bytes alive at one time.
    * The optimum can exceed the load, and finding it is NP-hard (Garey & Johnson, *Computers and
      Intractability*, 1979, problem SR2 "Dynamic Storage Allocation"; Stockmeyer showed it stays
      NP-hard with sizes 1 and 2). Gergov (SODA 1999) proved a packing within 3x the load always
      exists; in practice the greedy rules below land at or within a few percent of the load.

Algorithm (offline, greedy, several orders, keep the best):
    1. Allocations alive during the whole trace (weights, optimizer state) go at the bottom, one
       after another. This loses nothing: they overlap every other allocation in time, so in any
       packing the others sit in the gaps between them and can be shifted above them.
    2. The rest are placed one at a time, in one of several orders, each at an offset that does
       not overlap the already placed allocations alive at the same time:
       *greedy by size* (largest first; Sekiyama et al. 2018, "Profile-guided memory optimization
       for deep neural networks", arXiv:1804.10001; Pisarchyk & Lee 2020, "Efficient memory
       management for deep neural net inference", arXiv:2001.03288, as in TFLite's arena
       planner), by *area* (size x lifetime, largest first) and by *start* (allocation order,
       which is perfect for stack-like lifetimes). Each order is tried with *first fit* (lowest
       free gap) and *best fit* (tightest free gap).
    3. The lowest arena wins; the result is checked never to be below the load.

Known limitations:
    * A heuristic: on adversarial inputs the optimum can be lower than what it finds (the test
      suite checks it against an exhaustive search on small traces).
    * Each placement scans the allocations placed so far: O(n^2) over n allocations, vectorized.
      Traces above ``exhaustive_limit`` allocations use greedy by size with best fit only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memfit.snapshot.packing_exact import exact_search

__all__ = ["Interval", "Packing", "live_peak", "pack", "overlapping_pairs"]

ORDERS = ("size", "area", "start")
FITS = ("best", "first")


@dataclass(frozen=True, slots=True)
class Interval:
    """One allocation: ``size`` bytes alive from event ``start`` up to (not including) ``end``."""

    start: int
    end: int
    size: int


@dataclass(frozen=True, slots=True)
class Packing:
    """Where each allocation goes in the ideal arena.

    Attributes:
        offsets: the byte offset of each interval, in the order they were given.
        height: the arena size, ``max(offset + size)``: the memory the packing needs.
        live_peak: the most bytes alive at once, a lower bound on ``height``.
        method: which order and fit rule gave the lowest arena, e.g. ``"size/best"``.
    """

    offsets: tuple[int, ...]
    height: int
    live_peak: int
    method: str

    @property
    def overhead(self) -> float:
        """How far the packing is above the live peak, as a fraction (0.0 = perfect)."""
        return self.height / self.live_peak - 1.0 if self.live_peak else 0.0


def live_peak(intervals: Sequence[Interval]) -> int:
    """The most bytes alive at one time (the load): a sweep over starts and ends."""
    events: list[tuple[int, int]] = []
    for iv in intervals:
        if iv.end > iv.start and iv.size > 0:
            events.append((iv.start, iv.size))
            events.append((iv.end, -iv.size))
    events.sort(key=lambda e: (e[0], e[1]))  # frees before allocations at the same instant
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def pack(
    intervals: Sequence[Interval],
    *,
    exhaustive_limit: int = 4000,
    exact_limit: int = 9,
    progress: Callable[[int], None] | None = None,
) -> Packing:
    """Pack allocations into the smallest arena the greedy rules find.

    Args:
        intervals: allocations with their lifetimes; zero-size or empty ones get offset 0.
        exhaustive_limit: above this many allocations, try only greedy by size with best fit.
        exact_limit: at or below this many allocations (besides those alive throughout), search
            exhaustively when the greedy rules do not reach the load.
        progress: called with the number of allocations placed since the last call.

    Returns:
        The packing with the lowest arena over the orders and fit rules tried.
    """
    n = len(intervals)
    starts = np.fromiter((iv.start for iv in intervals), dtype=np.int64, count=n)
    ends = np.fromiter((iv.end for iv in intervals), dtype=np.int64, count=n)
    sizes = np.fromiter((iv.size for iv in intervals), dtype=np.int64, count=n)
    load = live_peak(intervals)
    real = (ends > starts) & (sizes > 0)
    offsets = np.zeros(n, dtype=np.int64)
    if not real.any():
        return Packing(tuple(int(o) for o in offsets), 0, load, "empty")

    # Step 1: allocations alive through the whole trace go at the bottom.
    first, last = starts[real].min(), ends[real].max()
    spanning = real & (starts <= first) & (ends >= last)
    base = 0
    for i in np.flatnonzero(spanning):
        offsets[i] = base
        base += int(sizes[i])
    rest = np.flatnonzero(real & ~spanning)

    best = _greedy(rest, starts, ends, sizes, load - base, exhaustive_limit, progress)
    if best[0] > load - base and len(rest) <= exact_limit:
        best = exact_search(rest, starts, ends, sizes, load - base, best)
    height, placed, method = best
    offsets[rest] = placed[rest] + base
    total = base + height
    assert total >= load, "a packing below the live peak means overlapping allocations"
    return Packing(tuple(int(o) for o in offsets), total, load, method)


_Best = tuple[int, np.ndarray, str]


def _greedy(
    rest: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    load: int,
    exhaustive_limit: int,
    progress: Callable[[int], None] | None,
) -> _Best:
    tries = [(o, f) for o in ORDERS for f in FITS]
    if len(rest) > exhaustive_limit:
        tries = [("size", "best")]
    best: _Best | None = None
    for order_name, fit in tries:
        order = _order(order_name, rest, starts, ends, sizes)
        placed = _place(order, starts, ends, sizes, fit=fit, progress=progress)
        _settle(rest, placed, starts, ends, sizes)
        height = int((placed[rest] + sizes[rest]).max()) if len(rest) else 0
        if best is None or height < best[0]:
            best = (height, placed, f"{order_name}/{fit}")
        if height <= load:
            break  # nothing is below the load
    assert best is not None
    return best


def _settle(
    idx: np.ndarray, offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray, sizes: np.ndarray
) -> None:
    """Let every allocation drop to the lowest gap it fits in, bottom first (never raises one)."""
    for _ in range(3):
        moved = False
        for i in idx[np.argsort(offsets[idx], kind="stable")]:
            others = idx[(idx != i) & (starts[idx] < ends[i]) & (ends[idx] > starts[i])]
            low = _lowest_gap(offsets[others], sizes[others], int(sizes[i]), "first")
            if low < offsets[i]:
                offsets[i] = low
                moved = True
        if not moved:
            return


def _order(
    name: str, idx: np.ndarray, starts: np.ndarray, ends: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    s, e, z = starts[idx], ends[idx], sizes[idx]
    keys: tuple[np.ndarray, ...]
    if name == "size":
        keys = (s, -(e - s), -z)  # lexsort: last key is primary
    elif name == "area":
        keys = (s, -z, -(z * (e - s)))
    else:
        keys = (-z, s)
    return idx[np.lexsort(keys)]


def _place(
    order: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    *,
    fit: str,
    progress: Callable[[int], None] | None,
) -> np.ndarray:
    """Place ``order`` one by one; returns offsets (only entries in ``order`` are meaningful)."""
    offsets = np.zeros(len(starts), dtype=np.int64)
    placed_idx = np.empty(len(order), dtype=np.int64)
    count = 0
    for k, i in enumerate(order):
        cand = placed_idx[:count]
        alive = cand[(starts[cand] < ends[i]) & (ends[cand] > starts[i])]
        offsets[i] = _lowest_gap(offsets[alive], sizes[alive], int(sizes[i]), fit)
        placed_idx[count] = i
        count += 1
        if progress is not None and (k + 1) % 512 == 0:
            progress(512)
    if progress is not None:
        progress(len(order) % 512)
    return offsets


def _lowest_gap(offs: np.ndarray, sizes: np.ndarray, need: int, fit: str) -> int:
    """The offset of a free gap of at least ``need`` bytes among occupied ``[off, off+size)``."""
    if len(offs) == 0:
        return 0
    order = np.argsort(offs, kind="stable")
    lo = offs[order]
    hi = np.maximum.accumulate(lo + sizes[order])
    gap_starts = np.concatenate(([0], hi))
    gap_ends = np.concatenate((lo, [np.iinfo(np.int64).max]))
    room = gap_ends - gap_starts
    fits = np.flatnonzero(room >= need)
    if fit == "best" and len(fits) > 1:
        finite = fits[:-1]  # the last gap (above everything) is unbounded
        return int(gap_starts[finite[np.argmin(room[finite])]])
    return int(gap_starts[fits[0]])


def overlapping_pairs(
    intervals: Sequence[Interval], offsets: Sequence[int]
) -> list[tuple[int, int]]:
    """Pairs of allocations alive at the same time whose address ranges overlap (should be none)."""
    bad = []
    for a in range(len(intervals)):
        ia = intervals[a]
        if ia.size <= 0 or ia.end <= ia.start:
            continue
        for b in range(a + 1, len(intervals)):
            ib = intervals[b]
            if ib.size <= 0 or ib.end <= ib.start:
                continue
            in_time = ia.start < ib.end and ib.start < ia.end
            in_space = offsets[a] < offsets[b] + ib.size and offsets[b] < offsets[a] + ia.size
            if in_time and in_space:
                bad.append((a, b))
    return bad
