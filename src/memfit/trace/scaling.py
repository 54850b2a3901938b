"""One traced sharded step, re-sized for another number of GPUs: prediction without re-tracing.

FSDP2 runs the same code on every rank whatever the world size N (N >= 2): the same operators,
allocations and frees in the same order. Only the sizes of what is made of shards change: a
shard of a weight has ``ceil(dim0 / N)`` rows on rank 0, and the padded all-gather output and
reduce-scatter input are N such shards. ``memfit.trace.sharding`` records, for each such
allocation, its size as a function of N (``ShardedSize``); here the trace gets the sizes for
another N and the caching allocator is simulated again: milliseconds to a second, where tracing
a 70B model takes tens of seconds. ``tests/trace/test_scaling.py`` checks that the re-sized
prediction equals a trace made at that N, to the byte.

Known limitations:
    * The same kind of sharding only: FSDP stays FSDP (the HSDP group size is the number of
      shards here), and N = 1 (no sharding) is not a sharded step.
    * Step time: only the optimizer's operators on shards are re-priced (in proportion to
      their bytes); communication time is the cost model's for the new N.
"""

from __future__ import annotations

import dataclasses

from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings
from memfit.trace.events import Trace
from memfit.trace.replay import replay
from memfit.trace.sharded_sizes import ShardedSize

__all__ = ["resized_trace", "sharded_bytes", "peaks_by_gpus"]


def resized_trace(trace: Trace, sizes: dict[int, ShardedSize], shards: int) -> Trace:
    """A copy of ``trace`` whose sharded allocations have their sizes for ``shards`` shards.

    Args:
        trace: a sharded step's trace.
        sizes: the ``ShardedSize`` of each sharded allocation, by key
            (``ShardedTracing.sizes``).
        shards: ranks each weight is divided over.
    """
    if shards < 2:
        raise ValueError(f"shards={shards}: a sharded step has at least 2")
    allocations = dict(trace.allocations)
    for key, size in sizes.items():
        allocation = allocations.get(key)
        if allocation is not None:
            allocations[key] = dataclasses.replace(allocation, size=size.bytes(shards))
    return Trace(allocations=allocations, events=trace.events, phases=trace.phases)


def sharded_bytes(sizes: dict[int, ShardedSize], keys: set[int], shards: int) -> int:
    """Bytes of the allocations ``keys`` (those that are sharded) for ``shards`` shards."""
    return sum(sizes[k].bytes(shards) for k in keys if k in sizes)


def peaks_by_gpus(
    trace: Trace,
    marks: dict[str, int],
    sizes: dict[int, ShardedSize],
    counts: list[int],
    allocator: AllocatorSettings = DEFAULT_SETTINGS,
) -> dict[int, tuple[int, int]]:
    """Predicted (peak allocated, peak reserved) of one rank for each number of shards.

    Args:
        trace, marks: a sharded step's trace and its marks (``StepTrace.trace``/``.marks``).
        sizes: ``StepTrace.sharded.sizes``.
        counts: the numbers of shards (each at least 2).
    """
    peaks = {}
    for shards in counts:
        result = replay(resized_trace(trace, sizes, shards), marks, allocator)
        peaks[shards] = (result.peak_allocated, result.peak_reserved)
    return peaks
