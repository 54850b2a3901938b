"""A simulation of PyTorch's CUDA caching allocator (the native backend), one device.

It replays a sequence of allocations and frees and reports what ``memory_allocated`` and
``memory_reserved`` would say, including their peaks. Rules, from
``c10/cuda/CUDACachingAllocator.cpp``:

* Requests round up to 512 B (``kMinBlockSize``), or to power-of-two divisions when
  ``roundup_power2_divisions`` is set.
* Requests up to 1 MiB (``kSmallSize``) use the small pool, served from 2 MiB segments
  (``kSmallBuffer``); larger ones use the large pool: below 10 MiB (``kMinLargeAlloc``) from
  20 MiB segments (``kLargeBuffer``), otherwise a segment of the request rounded up to 2 MiB.
* A free block is found best-fit (smallest size, then lowest address) among the blocks of the
  same pool and stream. Ties between blocks of one size are common (the same activation freed
  in several places), so addresses matter, and the simulation gives each segment the virtual
  address ``cudaMalloc`` would (``_AddressSpace``; H200, driver of CUDA 13): the driver maps new
  ranges from the top of its range down in 32 MiB-aligned chunks, each segment at the bottom of
  its chunk (598 of the 669 segments mapped below all others in bench/results/snapshots sat
  ``roundup(size, 32 MiB) - size`` below the lowest one), and it reuses a gap between mapped
  ranges (a chunk's unused top, a freed range) first, the lowest one that fits, from its bottom.
  So a new segment usually goes below the others and wins ties as the newest one, but a 12 MiB
  segment made after a 148 MiB one (a 160 MiB chunk) lands in that chunk's top 12 MiB, above
  older segments, and loses them (without this a recorded RoBERTa fp16 run replayed 148 MiB high).
* A block is split when the remainder is at least 512 B (small pool) or more than 1 MiB (large
  pool) and the block is not oversize (``max_split_size_mb``).
* Freed blocks merge with free neighbours of the same segment; segments are kept (cached) until
  an allocation fails, when unsplit cached segments are released and the allocation retried.
* With ``expandable_segments`` each (pool, stream) has one segment that grows by mapping pages
  (2 MiB for the small pool, 20 MiB for the large one) and any remainder of 512 B or more splits.

``memory_allocated`` counts block sizes (after rounding and after splitting), so a request that
does not split its block counts the whole block.

Known limitations:
    * ``garbage_collection_threshold``, ``max_non_split_rounding_mb`` other than its default,
      per-size ``roundup_power2_divisions`` lists and the ``cudaMallocAsync`` backend are not
      modelled; nor are cross-stream uses (``record_stream``), which only delay frees.
    * Address ranges mapped before the simulated run or outside the allocator (an earlier run
      in the process, lazily loaded kernels) are unknown, yet ``cudaMalloc`` fills their gaps:
      two H200 runs of one RoBERTa fp16 configuration reserved 3,808,428,032 B and
      3,963,617,280 B, a 148 MiB segment apart; and in a fresh process an encoder run's third
      segment went into a 448 MiB gap among such ranges, which the next 21 segments filled
      upwards, so its replay reserves 36 MiB more than the run did (2,030,043,136 B).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = [
    "AllocatorSettings",
    "CachingAllocatorSim",
    "DEFAULT_SETTINGS",
    "SimulatedOOM",
    "round_size",
]

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20
VA_CHUNK = 32 << 20  # alignment of the virtual address ranges cudaMalloc maps below the others


class SimulatedOOM(Exception):
    """The simulated device ran out of memory (only with a ``memory_limit``)."""


@dataclass(frozen=True)
class AllocatorSettings:
    """The ``PYTORCH_CUDA_ALLOC_CONF`` options the simulation honours."""

    expandable_segments: bool = False
    max_split_size_mb: int | None = None
    roundup_power2_divisions: int | None = None

    @property
    def max_split_size(self) -> int:
        return (1 << 62) if self.max_split_size_mb is None else self.max_split_size_mb << 20


DEFAULT_SETTINGS = AllocatorSettings()


def round_size(size: int, settings: AllocatorSettings = DEFAULT_SETTINGS) -> int:
    """Size of the block a request of ``size`` bytes gets (``round_size`` in PyTorch)."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    divisions = settings.roundup_power2_divisions or 0
    if divisions > 1 and size > MIN_BLOCK * divisions:
        if size & (size - 1) == 0:
            return size
        floor = 1 << (size.bit_length() - 1)
        step = floor >> (divisions.bit_length() - 1)
        if step == 0:
            return floor << 1
        rounded_down = size & ~(step - 1)
        return size if rounded_down == size else rounded_down + step
    return -(-size // MIN_BLOCK) * MIN_BLOCK


def _segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class _AddressSpace:
    """The virtual addresses ``cudaMalloc`` gives segments: a gap between mapped ranges first
    (the lowest that fits, from its bottom), else a new 32 MiB-aligned chunk below them all."""

    def __init__(self, top: int) -> None:
        self._top = top
        self._ranges: list[tuple[int, int]] = []  # (address, size), sorted by address

    def take(self, size: int) -> int:
        ranges = self._ranges
        for (below, below_size), (above, _) in zip(ranges, ranges[1:], strict=False):
            if above - (below + below_size) >= size:
                addr = below + below_size
                break
        else:
            lowest = ranges[0][0] if ranges else self._top
            addr = (lowest - size) // VA_CHUNK * VA_CHUNK
        bisect.insort(ranges, (addr, size))
        return addr

    def give_back(self, addr: int, size: int) -> None:
        self._ranges.remove((addr, size))


@dataclass(eq=False)
class _Block:
    addr: int
    size: int
    stream: int
    small: bool
    segment: int
    allocated: bool = False
    prev: _Block | None = None
    next: _Block | None = None

    def sort_key(self) -> tuple[int, int, int]:
        return (self.stream, self.size, self.addr)


@dataclass
class _Pool:
    keys: list[tuple[int, int, int]] = field(default_factory=list)
    blocks: dict[tuple[int, int, int], _Block] = field(default_factory=dict)

    def insert(self, block: _Block) -> None:
        key = block.sort_key()
        bisect.insort(self.keys, key)
        self.blocks[key] = block

    def remove(self, block: _Block) -> None:
        key = block.sort_key()
        index = bisect.bisect_left(self.keys, key)
        del self.keys[index]
        del self.blocks[key]

    def best_fit(self, stream: int, size: int, settings: AllocatorSettings) -> _Block | None:
        index = bisect.bisect_left(self.keys, (stream, size, -1))
        if index == len(self.keys) or self.keys[index][0] != stream:
            return None
        block = self.blocks[self.keys[index]]
        limit = settings.max_split_size
        if size < limit and block.size >= limit:
            return None  # do not split an oversize block for a small request
        if size >= limit and block.size >= size + LARGE_BUFFER:
            return None  # an oversize request may only round up a little
        return block


class CachingAllocatorSim:
    """Replays mallocs and frees; exposes PyTorch's allocated/reserved counters and peaks.

    Args:
        settings: allocator options (``PYTORCH_CUDA_ALLOC_CONF``).
        memory_limit: bytes the process may reserve (``set_per_process_memory_fraction``);
            exceeding it after releasing cached segments raises ``SimulatedOOM``.
    """

    def __init__(
        self, settings: AllocatorSettings = DEFAULT_SETTINGS, *, memory_limit: int | None = None
    ) -> None:
        self.settings = settings
        self.memory_limit = memory_limit
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.num_alloc_retries = 0
        self._pools = {True: _Pool(), False: _Pool()}
        self._used: dict[int, _Block] = {}
        self._segments: dict[int, _Block] = {}  # segment id -> first block
        self._expandable: dict[tuple[bool, int], int] = {}  # (small, stream) -> segment id
        self._segment_bytes: dict[int, int] = {}
        self._addresses = _AddressSpace(1 << 56)  # cudaMalloc's virtual addresses
        self._segment_addr: dict[int, int] = {}
        self._next_expandable = 1 << 40
        self._next_segment = 0

    def block_size(self, key: int) -> int:
        """Bytes ``memory_allocated`` counts for a live allocation."""
        return self._used[key].size

    def reset_peaks(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved

    # --- malloc ---------------------------------------------------------------------------
    def malloc(self, key: int, size: int, stream: int = 0) -> None:
        assert key not in self._used, f"allocation {key} is already live"
        size = round_size(size, self.settings)
        small = size <= SMALL_SIZE
        pool = self._pools[small]
        block = pool.best_fit(stream, size, self.settings)
        if block is None:
            block = self._new_memory(size, small, stream)
        else:
            pool.remove(block)
        if self._should_split(block, size):
            rest = _Block(
                block.addr + size,
                block.size - size,
                stream,
                small,
                block.segment,
                prev=block,
                next=block.next,
            )
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            pool.insert(rest)
        block.allocated = True
        self._used[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.settings.expandable_segments:
            return remaining >= MIN_BLOCK
        return size < self.settings.max_split_size and remaining > SMALL_SIZE

    def _new_memory(self, size: int, small: bool, stream: int) -> _Block:
        if self.settings.expandable_segments:
            return self._grow_expandable(size, small, stream)
        segment = _segment_size(size)
        if not self._fits(segment):
            self.num_alloc_retries += 1
            self._release_cached()
            if not self._fits(segment):
                raise SimulatedOOM(f"cannot reserve {segment} bytes for a {size}-byte request")
        addr = self._addresses.take(segment)
        block = _Block(addr, segment, stream, small, self._next_segment)
        self._segments[self._next_segment] = block
        self._segment_addr[self._next_segment] = addr
        self._segment_bytes[self._next_segment] = segment
        self._next_segment += 1
        self._reserve(segment)
        return block

    def _fits(self, more: int) -> bool:
        return self.memory_limit is None or self.reserved + more <= self.memory_limit

    def _reserve(self, more: int) -> None:
        self.reserved += more
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _grow_expandable(self, size: int, small: bool, stream: int) -> _Block:
        page = SMALL_BUFFER if small else LARGE_BUFFER
        segment = self._expandable.get((small, stream))
        tail: _Block | None = None
        if segment is None:
            segment = self._next_segment
            self._next_segment += 1
            self._expandable[(small, stream)] = segment
            self._segment_bytes[segment] = 0
            start = self._next_expandable
            self._next_expandable += 1 << 44
        else:
            tail = self._segments[segment]
            while tail.next is not None:
                tail = tail.next
            start = tail.addr + tail.size
            if tail.allocated:
                tail = None
        have = tail.size if tail is not None else 0
        more = -(-(size - have) // page) * page
        if not self._fits(more):
            self.num_alloc_retries += 1
            raise SimulatedOOM(f"cannot map {more} more bytes for a {size}-byte request")
        self._reserve(more)
        self._segment_bytes[segment] += more
        if tail is not None:
            self._pools[small].remove(tail)
            tail.size += more
            return tail
        block = _Block(start, more, stream, small, segment)
        last = self._segments.get(segment)
        if last is None:
            self._segments[segment] = block
        else:
            while last.next is not None:
                last = last.next
            last.next, block.prev = block, last
        return block

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: give every entirely unused cached segment back."""
        self._release_cached()

    def _release_cached(self) -> None:
        """Free every cached segment that is entirely unused (``release_cached_blocks``)."""
        for segment, first in list(self._segments.items()):
            if first.allocated or first.next is not None or segment in self._expandable.values():
                continue
            self._pools[first.small].remove(first)
            del self._segments[segment]
            self.reserved -= self._segment_bytes.pop(segment)
            self._addresses.give_back(self._segment_addr.pop(segment), first.size)

    # --- free -----------------------------------------------------------------------------
    def free(self, key: int) -> None:
        block = self._used.pop(key)
        self.allocated -= block.size
        block.allocated = False
        pool = self._pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is None or neighbour.allocated:
                continue
            pool.remove(neighbour)
            if neighbour is block.prev:
                block.addr = neighbour.addr
                block.prev = neighbour.prev
                if neighbour.prev is not None:
                    neighbour.prev.next = block
                else:
                    self._segments[block.segment] = block
            else:
                block.next = neighbour.next
                if neighbour.next is not None:
                    neighbour.next.prev = block
            block.size += neighbour.size
        pool.insert(block)
