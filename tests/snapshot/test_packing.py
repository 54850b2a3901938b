"""The ideal packing: exact on small traces, at the load where the load is achievable, and never
below it."""

from __future__ import annotations

import itertools
import random

import pytest

from memfit.snapshot.packing import Interval, live_peak, overlapping_pairs, pack


def _fits(items: list[Interval], offsets: dict[int, int], i: int, off: int) -> bool:
    a = items[i]
    for j, oj in offsets.items():
        b = items[j]
        if a.start < b.end and b.start < a.end and off < oj + b.size and oj < off + a.size:
            return False
    return True


def _search(items: list[Interval], order: list[int], offsets: dict[int, int], height: int) -> bool:
    if len(offsets) == len(order):
        return True
    i = order[len(offsets)]
    for off in range(height - items[i].size + 1):
        if _fits(items, offsets, i, off):
            offsets[i] = off
            if _search(items, order, offsets, height):
                return True
            del offsets[i]
    return False


def _exact_by_grid(items: list[Interval]) -> int:
    """The optimum by trying every integer offset (an independent, slow reference)."""
    order = sorted(range(len(items)), key=lambda i: -items[i].size)
    height = live_peak(items)
    while not _search(items, order, {}, height):
        height += 1
    return height


def test_live_peak_counts_what_is_alive_together() -> None:
    items = [Interval(0, 4, 10), Interval(2, 6, 5), Interval(4, 8, 7)]
    assert live_peak(items) == 15  # [2,4): 10 + 5; at 4 the first is freed before the third
    assert live_peak([]) == 0


def test_hand_case_where_first_fit_in_time_order_wastes_a_hole() -> None:
    # A small block freed early leaves a hole too small for the big one that comes later.
    items = [Interval(0, 2, 1), Interval(0, 10, 1), Interval(2, 10, 2)]
    packing = pack(items)
    assert packing.live_peak == 3
    assert packing.height == 3  # the optimum: the long-lived block at the bottom
    assert not overlapping_pairs(items, packing.offsets)


def test_allocations_alive_throughout_go_to_the_bottom() -> None:
    items = [Interval(0, 10, 100), Interval(1, 3, 7), Interval(0, 10, 50), Interval(4, 9, 9)]
    packing = pack(items)
    assert sorted(packing.offsets[i] for i in (0, 2)) == [0, 100]
    assert packing.height == 159 == packing.live_peak


def test_empty_and_zero_size_allocations() -> None:
    assert pack([]).height == 0
    packing = pack([Interval(0, 0, 10), Interval(3, 4, 0), Interval(1, 2, 5)])
    assert packing.height == 5 == packing.live_peak


def test_equals_the_exhaustive_optimum_on_small_random_traces() -> None:
    rng = random.Random(7)
    for _ in range(120):
        items = []
        for _ in range(rng.randint(2, 6)):
            start = rng.randint(0, 6)
            items.append(Interval(start, rng.randint(start + 1, 8), rng.randint(1, 4)))
        packing = pack(items)
        assert not overlapping_pairs(items, packing.offsets)
        assert packing.height == _exact_by_grid(items), items


def _training_step(layers: int, rng: random.Random) -> list[Interval]:
    """Forward saves activations; backward frees them in reverse, with temporaries: stack-like."""
    items, saved, t = [], [], 0
    for _ in range(layers):
        for _ in range(3):
            saved.append((t, rng.choice([1, 2, 4]) << 20))
            t += 1
        items.append(Interval(t, t + 2, 2 << 20))  # a temporary inside the layer
        t += 2
    for start, size in reversed(saved):
        items.append(Interval(t, t + 2, size))  # its gradient's temporary
        t += 2
        items.append(Interval(start, t, size))
        t += 1
    return items


@pytest.mark.parametrize("layers", [4, 40])
def test_stack_like_training_step_packs_at_the_live_peak(layers: int) -> None:
    items = _training_step(layers, random.Random(layers))
    items.append(Interval(0, 10_000, 3 << 30))  # weights, alive throughout
    packing = pack(items)
    assert packing.height == packing.live_peak
    assert not overlapping_pairs(items, packing.offsets)


def test_equal_sizes_pack_at_the_live_peak() -> None:
    # Interval graphs are perfect: with one size, the optimum is the most alive at once.
    rng = random.Random(3)
    for _ in range(20):
        items = []
        for _ in range(150):
            start = rng.randint(0, 300)
            items.append(Interval(start, start + rng.randint(1, 60), 512))
        packing = pack(items)
        assert packing.height == packing.live_peak


def _tiling(rng: random.Random, t0: int, t1: int, a0: int, a1: int, depth: int) -> list[Interval]:
    """Cut a time x address rectangle into pieces: a trace whose optimum is its height."""
    if depth == 0 or (t1 - t0 < 2 and a1 - a0 < 2):
        return [Interval(t0, t1, a1 - a0)]
    if (rng.random() < 0.5 and t1 - t0 >= 2) or a1 - a0 < 2:
        cut = rng.randint(t0 + 1, t1 - 1)
        return _tiling(rng, t0, cut, a0, a1, depth - 1) + _tiling(rng, cut, t1, a0, a1, depth - 1)
    cut = rng.randint(a0 + 1, a1 - 1)
    return _tiling(rng, t0, t1, a0, cut, depth - 1) + _tiling(rng, t0, t1, cut, a1, depth - 1)


def test_never_below_the_live_peak_and_never_overlapping() -> None:
    rng = random.Random(11)
    for _ in range(30):
        items = _tiling(rng, 0, 40, 0, 64, 6)
        packing = pack(items)
        assert packing.live_peak == 64
        assert 64 <= packing.height <= 2 * 64  # a heuristic on adversarial cuts, still close
        assert not overlapping_pairs(items, packing.offsets)


def test_packing_many_allocations_is_fast_enough() -> None:
    rng = random.Random(0)
    items = list(
        itertools.chain.from_iterable(
            [
                Interval(i.start + 1000 * k, i.end + 1000 * k, i.size)
                for i in _training_step(30, rng)
            ]
            for k in range(20)
        )
    )
    calls: list[int] = []
    packing = pack(items, progress=calls.append)
    assert packing.height == packing.live_peak
    assert sum(calls) >= len(items)
