"""The allocator simulation reproduces real reserved peaks on recorded H200 runs.

Eight recordings (``torch.cuda.memory._snapshot()``, H200, torch 2.11; bench/results/snapshots):
four training steps of seven CNN configurations of the validation zoo from an empty allocator,
and a whole Llama-3.2-3B-shaped run with its optimizer on the host, offloaded checkpoints on two
side streams and a ``torch.cuda.empty_cache()`` after the model was moved (2 warm-up + 3 steps).
Replaying each one's allocations and frees in their real order must reserve what PyTorch did.
Before the simulator placed new segments below the old ones (``cudaMalloc``'s top-down virtual
addresses decide best-fit ties), the 3B run replayed 4.7% high and the RegNet-X run 3.6% low.
"""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from memfit.snapshot.fragmentation import simulated_reserved
from memfit.snapshot.load import loads_snapshot
from memfit.snapshot.trace import replay
from memfit.trace.allocator import CachingAllocatorSim

SNAPSHOTS = Path(__file__).parents[2] / "bench" / "results" / "snapshots"
RUNS = sorted(p.name for p in SNAPSHOTS.glob("*_snapshot_h200.pickle.gz"))
MiB = 1 << 20


def test_the_recordings_are_there() -> None:
    assert len(RUNS) >= 8, RUNS  # bench/reserved_snapshots.py adds more


# recordings the simulation does not replay yet (found by bench/reserved_snapshots.py, run of
# this commit's session): strict, so that a fix is noticed
KNOWN_MISSES = {
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
    segments before it (``cudaMalloc`` reused a range freed before the recording started),
    where the simulator places every new segment below the others. Given the recorded
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
