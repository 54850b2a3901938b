"""The allocator simulation reproduces real reserved peaks on recorded H200 runs.

Eight recordings (``torch.cuda.memory._snapshot()``, H200, torch 2.11; bench/results/snapshots):
four training steps of seven CNN configurations of the validation zoo from an empty allocator,
and a whole Llama-3.2-3B-shaped run with its optimizer on the host, offloaded checkpoints on two
side streams and a ``torch.cuda.empty_cache()`` after the model was moved (2 warm-up + 3 steps).
Replaying each one's allocations and frees in their real order must reserve what PyTorch did.
Before the simulator placed new segments below the old ones (``cudaMalloc``'s top-down virtual
addresses decide best-fit ties), the 3B run replayed 4.7% high and the RegNet-X run 3.6% low;
before it reused the unused tops of ``cudaMalloc``'s 32 MiB-aligned chunks, the RoBERTa fp16 run
replayed 148 MiB (4.1%) high.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
from pathlib import Path

import pytest

from memfit.snapshot.fragmentation import simulated_reserved
from memfit.snapshot.load import loads_snapshot
from memfit.snapshot.trace import replay
from memfit.trace.allocator import CachingAllocatorSim, _AddressSpace

SNAPSHOTS = Path(__file__).parents[2] / "bench" / "results" / "snapshots"
RUNS = sorted(p.name for p in SNAPSHOTS.glob("*_snapshot_h200.pickle.gz"))
MiB = 1 << 20


def test_the_recordings_are_there() -> None:
    assert len(RUNS) >= 8, RUNS  # bench/reserved_snapshots.py adds more


# recordings the simulation does not replay yet (found by bench/reserved_snapshots.py, run of
# this commit's session): strict, so that a fix is noticed
KNOWN_MISSES = {
    "transformer-encoder_full-ckpt-x6_plan_snapshot_h200.pickle.gz": (
        "replays 36 MiB (1.9%) above the run's 2,030,043,136 B reserved (bf16-mixed, every block "
        "checkpointed): cudaMalloc mapped the run's third segment 426 MiB below the second, in a "
        "gap left by ranges mapped outside the allocator, and filled that gap upwards with the "
        "next 21 segments, above older ones, so best-fit ties went the other way "
        "(test_recorded_addresses_explain_the_encoder_miss)"
    ),
    "transformer-encoder_full-checkpointings_plan_snapshot_h200.pickle.gz": (
        "replays 8 MiB (0.4%) above the run's 1,887,436,800 B reserved; recorded after another "
        "plan in the same process, so blocks cached before the recording are unseen"
    ),
    "nn-transformer-encoder-fp32_steps_snapshot_h200.pickle.gz": (
        "replays 64 MiB (1.5%) above the run's 4,477,419,520 B reserved: cudaMalloc mapped a "
        "new segment above older ones (a range freed before the recording), so a best-fit tie "
        "went the other way (test_recorded_addresses_explain_the_transformer_miss)"
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[n]))
        if n in KNOWN_MISSES
        else n
        for n in RUNS
    ],
)
def test_replayed_reserved_peak_matches_the_run(name: str) -> None:
    trace = replay(loads_snapshot(gzip.decompress((SNAPSHOTS / name).read_bytes())))
    simulated = simulated_reserved(trace)
    # the runs' own peaks; 2 MiB (one small-pool segment) of slack for the blocks alive before
    # the recording started, whose original placement the snapshot does not show
    assert abs(simulated - trace.peak_reserved) <= 2 * MiB, (simulated, trace.peak_reserved)


def test_equal_sizes_go_to_the_newest_segment() -> None:
    sim = CachingAllocatorSim()
    for key in (1, 2, 3):
        sim.malloc(key, 100 * MiB)  # three segments of 100 MiB, made in this order
    sim.free(1)
    sim.free(2)
    sim.malloc(4, 100 * MiB)
    assert sim.block_size(4) == 100 * MiB
    sim.free(4)
    sim.malloc(5, 60 * MiB)  # splits the chosen block: the remainder stays in that segment
    sim.malloc(6, 40 * MiB)
    assert sim.reserved == 300 * MiB
    # the newer of the two free segments (2) was split; segment 1 is still whole
    whole = [b for b in sim._pools[False].blocks.values() if b.size == 100 * MiB]
    assert [b.segment for b in whole] == [0]


def test_a_new_segment_fills_the_top_of_an_older_chunk() -> None:
    """cudaMalloc maps a 12 MiB segment into the unused top of an older 32 MiB chunk (above
    older segments) before it maps a new chunk below them all: an equal free block in an older,
    lower segment then wins the best-fit tie."""
    sim = CachingAllocatorSim()
    sim.malloc(1, 20 * MiB)  # segment 0, a 32 MiB chunk at the top
    sim.malloc(2, 12 * MiB)  # segment 1, a new chunk below: its top 20 MiB are unused
    sim.malloc(3, 12 * MiB)  # segment 2, in that top: above segment 1
    sim.free(2)
    sim.free(3)
    sim.malloc(4, 12 * MiB)
    taken = sim._used[4]
    assert taken.segment == 1  # the lower of the two (the newest would be segment 2)
    assert sim._segments[1].addr < sim._segments[2].addr < sim._segments[0].addr
    assert sim._segments[2].addr - sim._segments[1].addr == 12 * MiB
    assert sim.reserved == 44 * MiB


def test_recorded_roberta_segments_fill_chunk_tops() -> None:
    """The recording behind that rule: segments mapped below all others start 32 MiB-aligned
    with ``roundup(size, 32 MiB) - size`` unused above them, and the 12 MiB segment of event 6210
    lies in the top 12 MiB of the 160 MiB chunk of a 148 MiB segment made before it."""
    name = "roberta-cls-fp16-mixed_steps_snapshot_h200.pickle.gz"
    snapshot = loads_snapshot(gzip.decompress((SNAPSHOTS / name).read_bytes()))
    made = [e for e in snapshot["device_traces"][0] if e["action"] == "segment_alloc"]
    chunk = 32 * MiB
    below = chunked = 0
    for k, entry in enumerate(made[1:], 1):
        lowest = min(e["addr"] for e in made[:k])
        if entry["addr"] < lowest:
            below += 1
            rounded = -(-entry["size"] // chunk) * chunk
            chunked += entry["addr"] % chunk == 0 and lowest - entry["addr"] == rounded
    assert (below, chunked) == (83, 76)
    twelve = made[134]
    assert twelve["size"] == 12 * MiB
    host = next(e for e in made[:134] if e["addr"] + e["size"] == twelve["addr"])
    assert host["size"] == 148 * MiB and host["addr"] % chunk == 0
    assert twelve["addr"] < max(e["addr"] for e in made[:134])


def test_empty_cache_gives_back_unused_segments() -> None:
    sim = CachingAllocatorSim()
    sim.malloc(1, 100 * MiB)
    sim.malloc(2, 50 * MiB)
    sim.free(1)
    sim.empty_cache()
    assert sim.reserved == 50 * MiB


class _AtRecordedAddresses(CachingAllocatorSim):
    """The simulator with each new segment at the address the run's ``cudaMalloc`` gave it."""

    address: int | None = None

    def _new_memory(self, size: int, small: bool, stream: int):  # type: ignore[no-untyped-def]
        block = super()._new_memory(size, small, stream)
        if self.address is not None:
            block.addr = self.address
        return block


def test_recorded_addresses_explain_the_transformer_miss() -> None:
    """At its event 185 the run had two free 32 MiB blocks and took the one in an older
    segment: the 96 MiB segment made at event 172 was mapped at a higher address than the
    segments before it (``cudaMalloc`` reused a range freed before the recording started,
    which the simulator cannot know of), where the simulator places it below the others (no
    gap between the ranges it knows fits 96 MiB). Given the recorded
    addresses, the same rules reserve exactly what the run did."""
    name = "nn-transformer-encoder-fp32_steps_snapshot_h200.pickle.gz"
    snapshot = loads_snapshot(gzip.decompress((SNAPSHOTS / name).read_bytes()))
    segments = [(s["address"], s["total_size"]) for s in snapshot["segments"]]
    sim = _AtRecordedAddresses()
    keys: dict[int, int] = {}
    made = itertools.count(1)
    for entry in snapshot["device_traces"][0]:
        action, address = entry["action"], entry["addr"]
        if action == "segment_alloc":
            segments.append((address, entry["size"]))
        elif action == "alloc":
            keys[address] = next(made)
            bases = [base for base, size in segments if base <= address < base + size]
            sim.address = bases[-1] if bases else None
            sim.malloc(keys[address], entry["size"], entry["stream"])
        elif action == "free_completed" and address in keys:
            sim.free(keys.pop(address))
    assert sim.peak_reserved == replay(snapshot).peak_reserved == 4_477_419_520


class _RecordedFirst(_AddressSpace):
    """``cudaMalloc``'s addresses as the simulator places them, but the first few as recorded."""

    def __init__(self, recorded: list[tuple[int, int]]) -> None:
        super().__init__(1 << 56)
        self._recorded = list(recorded)

    def take(self, size: int) -> int:
        if not self._recorded:
            return super().take(size)
        addr, recorded_size = self._recorded.pop(0)
        assert recorded_size == size
        bisect.insort(self._ranges, (addr, size))
        return addr


def test_recorded_addresses_explain_the_encoder_miss() -> None:
    """The encoder recording checkpointing all six blocks starts from an empty allocator, yet
    ``cudaMalloc`` mapped its third segment (20 MiB, trace entry 4) at 0x7fc9d8000000, 426 MiB
    below the 2 MiB one before it: a gap among ranges mapped outside the allocator (the CUDA
    context, lazily loaded kernels), which the simulator cannot know of. The next 21 segments
    filled that gap upwards, each above the ones before, where the simulator puts each new one
    below all others. So at trace entry 188, with free 16 MiB blocks in segment 3 (0x7fc9da000000)
    and in the top of segment 23 (48 MiB, 0x7fc9ef000000), the run split the lower, older one
    and the simulator the newer one; the replay ends 36 MiB high. Given the recorded addresses
    of the first three segments only, the simulator's own address rule (gaps lowest first, from
    their bottom) fills the gap upwards too and reserves exactly what the run did."""
    name = "transformer-encoder_full-ckpt-x6_plan_snapshot_h200.pickle.gz"
    snapshot = loads_snapshot(gzip.decompress((SNAPSHOTS / name).read_bytes()))
    entries = snapshot["device_traces"][0]
    made = [(e["addr"], e["size"]) for e in entries if e["action"] == "segment_alloc"]
    assert made[2] == (0x7FC9D8000000, 20 * MiB)
    assert made[1][0] - (made[2][0] + made[2][1]) == 426 * MiB
    filling = [addr for addr, _ in made[2:24]]
    assert filling == sorted(filling) and filling[-1] + made[23][1] <= made[1][0]
    assert entries[188]["action"] == "alloc" and entries[188]["addr"] == made[3][0]
    assert made[3][0] < made[23][0] + 32 * MiB  # the 16 MiB block the run took is the lower

    def peak(recorded: int) -> int:
        sim = CachingAllocatorSim()
        sim._addresses = _RecordedFirst(made[:recorded])
        keys: dict[int, int] = {}
        numbers = itertools.count(1)
        for entry in entries:
            if entry["action"] == "alloc":
                keys[entry["addr"]] = next(numbers)
                sim.malloc(keys[entry["addr"]], entry["size"], entry["stream"])
            elif entry["action"] == "free_completed":
                sim.free(keys.pop(entry["addr"]))
        return sim.peak_reserved

    assert replay(snapshot).peak_reserved == 2_030_043_136
    assert peak(0) == 2_030_043_136 + 36 * MiB
    assert peak(3) == 2_030_043_136
