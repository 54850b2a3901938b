"""The CUDA caching allocator simulation, rule by rule (c10/cuda/CUDACachingAllocator.cpp)."""

from __future__ import annotations

import pytest

from memfit.trace.allocator import (
    AllocatorSettings,
    CachingAllocatorSim,
    SimulatedOOM,
    round_size,
)
from memfit.units import MiB


def test_round_size():
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    # power-of-two divisions: 5000 lies in [4096, 8192), split in 4 steps of 1024
    assert round_size(5000, AllocatorSettings(roundup_power2_divisions=4)) == 5120
    assert round_size(4096, AllocatorSettings(roundup_power2_divisions=4)) == 4096


def test_small_requests_share_a_2_mib_segment():
    sim = CachingAllocatorSim()
    sim.malloc(1, 100)
    sim.malloc(2, 1000)
    assert sim.allocated == 512 + 1024
    assert sim.reserved == 2 * MiB


def test_medium_requests_take_20_mib_segments_and_split():
    sim = CachingAllocatorSim()
    sim.malloc(1, 3 * MiB)
    assert (sim.allocated, sim.reserved) == (3 * MiB, 20 * MiB)


def test_large_request_rounds_to_2_mib_and_an_unsplit_remainder_counts_as_allocated():
    sim = CachingAllocatorSim()
    sim.malloc(1, 19 * MiB)  # segment of 20 MiB; the 1 MiB left is too small to split off
    assert (sim.allocated, sim.reserved) == (20 * MiB, 20 * MiB)


def test_freed_blocks_merge_and_are_reused_best_fit():
    sim = CachingAllocatorSim()
    sim.malloc(1, 3 * MiB)  # 20 MiB segment: [3 | 17 free]
    sim.malloc(2, 12 * MiB)  # best fit is the free 17 MiB: [3 | 12 | 5 free]
    assert sim.reserved == 20 * MiB
    sim.free(1)  # [3 free | 12 | 5 free]: nothing to merge with
    sim.malloc(3, 16 * MiB)  # no free block of 16 MiB: a new 16 MiB segment
    assert (sim.allocated, sim.reserved) == (28 * MiB, 36 * MiB)
    sim.free(2)  # 3 + 12 + 5 merge back into one free 20 MiB block
    sim.malloc(4, 18 * MiB)  # which now fits without a new segment
    assert (sim.allocated, sim.reserved) == (34 * MiB, 36 * MiB)


def test_blocks_are_not_shared_across_streams():
    sim = CachingAllocatorSim()
    sim.malloc(1, 1000, stream=0)
    sim.free(1)
    sim.malloc(2, 1000, stream=1)
    assert sim.reserved == 4 * MiB


def test_memory_limit_releases_cached_segments_then_runs_out():
    sim = CachingAllocatorSim(memory_limit=30 * MiB)
    sim.malloc(1, 15 * MiB)  # 16 MiB segment
    sim.free(1)  # cached, still reserved
    sim.malloc(2, 20 * MiB)  # 16 + 20 > 30: the cached segment is released first
    assert sim.reserved == 20 * MiB and sim.num_alloc_retries == 1
    with pytest.raises(SimulatedOOM):
        sim.malloc(3, 12 * MiB)


def test_expandable_segments_grow_by_20_mib_pages():
    sim = CachingAllocatorSim(AllocatorSettings(expandable_segments=True))
    sim.malloc(1, 5 * MiB)
    assert (sim.allocated, sim.reserved) == (5 * MiB, 20 * MiB)
    sim.malloc(2, 30 * MiB)  # 15 MiB free at the end: map one more 20 MiB page
    assert (sim.allocated, sim.reserved) == (35 * MiB, 40 * MiB)


def test_max_split_size_keeps_oversize_blocks_for_large_requests():
    sim = CachingAllocatorSim(AllocatorSettings(max_split_size_mb=64))
    sim.malloc(1, 100 * MiB)
    sim.free(1)
    sim.malloc(2, 10 * MiB)  # may not split the cached 100 MiB block: a new segment
    assert sim.reserved == 110 * MiB


def test_peaks_reset():
    sim = CachingAllocatorSim()
    sim.malloc(1, 12 * MiB)
    sim.free(1)
    sim.reset_peaks()
    assert sim.peak_allocated == 0 and sim.peak_reserved == 12 * MiB
