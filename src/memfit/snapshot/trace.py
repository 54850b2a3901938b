"""Replay a snapshot's allocation history: every allocation's lifetime, and memory over time.

The event index used everywhere below counts the history entries that change memory (``alloc``,
``free_completed``, ``segment_alloc``/``segment_free``, ``segment_map``/``segment_unmap``), oldest
first. Live bytes follow ``alloc`` and ``free_completed``, each rounded up to the allocator's
512-byte granularity, so they track ``torch.cuda.memory_allocated()``; reserved bytes follow the
segment events, anchored to the segments present when the snapshot was dumped.

Allocations made before the recording started (or pushed out of the history's ring buffer) are
alive from before event 0 (``start`` -1): those freed during the recording, and the active blocks
still in the segments at the dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from memfit.errors import InvalidInputError
from memfit.profile import Category, Phase
from memfit.snapshot import frames

__all__ = ["Allocation", "DeviceTrace", "replay", "round_size"]

_MEMORY_ACTIONS = {
    "alloc",
    "free_completed",
    "segment_alloc",
    "segment_free",
    "segment_map",
    "segment_unmap",
}
_RESERVE = {"segment_alloc": 1, "segment_map": 1, "segment_free": -1, "segment_unmap": -1}
_MIN_BLOCK = 512
_PHASES = {p.value for p in Phase}
_CATEGORIES = {c.value for c in Category}


def round_size(size: int) -> int:
    """The caching allocator's rounding: up to a multiple of 512 bytes, at least 512."""
    return max(_MIN_BLOCK, (size + _MIN_BLOCK - 1) // _MIN_BLOCK * _MIN_BLOCK)


@dataclass(frozen=True, slots=True)
class Allocation:
    """One allocation and its lifetime in event indices: alive after events ``start..end-1``.

    ``start`` is -1 and ``before`` True for allocations made before the recording; ``end`` is
    the number of events for allocations still alive at the dump.
    """

    size: int
    stream: int
    start: int
    end: int
    phase: Phase
    category: Category | None  # set only where it is certain (metadata, weights at setup)
    module: str
    where: str
    before: bool = False
    module_type: str = ""

    @property
    def rounded(self) -> int:
        return round_size(self.size)


@dataclass(frozen=True, slots=True)
class DeviceTrace:
    """The history of one device, replayed."""

    device: int
    num_events: int
    allocations: tuple[Allocation, ...]
    allocated: np.ndarray  # live bytes after each event (int64, length num_events)
    reserved: np.ndarray  # reserved bytes after each event
    phases: tuple[Phase, ...]  # phase of each event
    settings: Mapping[str, Any]
    warnings: tuple[str, ...]

    @property
    def peak_index(self) -> int:
        return int(np.argmax(self.allocated)) if self.num_events else 0

    @property
    def peak_allocated(self) -> int:
        return int(self.allocated.max()) if self.num_events else 0

    @property
    def peak_reserved(self) -> int:
        return int(self.reserved.max()) if self.num_events else 0


def pick_device(snapshot: Mapping[str, Any], device: int | None = None) -> int:
    """The device to explain: the one asked for, else the one with the longest history."""
    traces = snapshot["device_traces"]
    if device is None:
        return max(range(len(traces)), key=lambda d: len(traces[d]))
    if not 0 <= device < len(traces) or not traces[device]:
        have = [d for d, t in enumerate(traces) if t]
        raise InvalidInputError(
            f"device {device} has no allocation history in this snapshot; devices with one: "
            f"{have}. Pick one of those with --device-index."
        )
    return device


def replay(snapshot: Mapping[str, Any], device: int | None = None) -> DeviceTrace:
    """Turn one device's history into allocations and live/reserved bytes per event."""
    dev = pick_device(snapshot, device)
    entries = [e for e in snapshot["device_traces"][dev] if e.get("action") in _MEMORY_ACTIONS]
    warnings = _history_warnings(snapshot["device_traces"][dev])
    n = len(entries)
    phases: list[Phase] = []
    delta = np.zeros(n, dtype=np.int64)
    reserve = np.zeros(n, dtype=np.int64)
    open_allocs: dict[int, tuple[int, Mapping[str, Any], Phase, dict[str, str]]] = {}
    done: list[Allocation] = []
    early: list[Allocation] = []
    phase = Phase.SETUP
    for i, entry in enumerate(entries):
        action, addr, size = entry["action"], int(entry.get("addr", 0)), int(entry.get("size", 0))
        meta = frames.parse_metadata(entry)
        if "phase" in meta and meta["phase"] in _PHASES:
            phase = Phase(meta["phase"])
        elif action == "alloc":
            phase = frames.next_phase(frames.frame_phase(entry), phase)
        phases.append(phase)
        if action == "alloc":
            open_allocs[addr] = (i, entry, phase, meta)
            delta[i] = round_size(size)
        elif action == "free_completed":
            delta[i] = -round_size(size)
            if addr in open_allocs:
                done.append(_allocation(*open_allocs.pop(addr), end=i))
            else:
                early.append(_allocation(-1, entry, Phase.SETUP, meta, end=i, before=True))
        else:
            reserve[i] = _RESERVE[action] * size
    for start, entry, ph, meta in open_allocs.values():
        done.append(_allocation(start, entry, ph, meta, end=n))
    open_addrs = {int(e.get("addr", -1)) for _, e, _, _ in open_allocs.values()}
    early += _blocks_alive_before(snapshot, dev, open_addrs, n)
    base_allocated = sum(a.rounded for a in early)
    segments_now = sum(
        int(s.get("total_size", 0)) for s in snapshot["segments"] if s.get("device", dev) == dev
    )
    base_reserved = segments_now - int(reserve.sum())
    if base_reserved < 0:
        warnings.append("the segment history does not add up to the segments at the dump")
        base_reserved = 0
    allocated = base_allocated + np.cumsum(delta)
    reserved = base_reserved + np.cumsum(reserve)
    if early:
        warnings.append(
            f"{len(early)} allocations ({sum(a.rounded for a in early):,} bytes) were made before "
            f"the recording started; they count as alive from its first event"
        )
    return DeviceTrace(
        device=dev,
        num_events=n,
        allocations=tuple(sorted(early + done, key=lambda a: (a.start, a.end))),
        allocated=allocated,
        reserved=np.maximum(reserved, allocated),
        phases=tuple(phases),
        settings=dict(snapshot.get("allocator_settings") or {}),
        warnings=tuple(warnings),
    )


def _allocation(
    start: int,
    entry: Mapping[str, Any],
    phase: Phase,
    meta: Mapping[str, str],
    *,
    end: int,
    before: bool = False,
) -> Allocation:
    category: Category | None = None
    if meta.get("category") in _CATEGORIES:
        category = Category(meta["category"])
    elif phase is Phase.SETUP and entry.get("frames"):
        category = frames.setup_category(entry)
    return Allocation(
        size=int(entry.get("size", entry.get("requested_size", 0))),
        stream=int(entry.get("stream", 0)),
        start=start,
        end=end,
        phase=phase,
        category=category,
        module=meta.get("module", ""),
        module_type=meta.get("type", ""),
        where=frames.where(entry),
        before=before,
    )


def _blocks_alive_before(
    snapshot: Mapping[str, Any], dev: int, open_addrs: set[int], n: int
) -> list[Allocation]:
    """Active blocks at the dump that the history never saw allocated."""
    found = []
    for segment in snapshot["segments"]:
        if segment.get("device", dev) != dev:
            continue
        for block in segment.get("blocks", ()):
            if not str(block.get("state", "")).startswith("active"):
                continue
            if int(block.get("address", -1)) in open_addrs:
                continue
            entry = {
                "size": int(block.get("requested_size", block.get("size", 0))),
                "stream": segment.get("stream", 0),
                "frames": block.get("frames", []),
            }
            found.append(_allocation(-1, entry, Phase.SETUP, {}, end=n, before=True))
    return found


def _history_warnings(entries: list[Mapping[str, Any]]) -> list[str]:
    warnings = []
    ooms = [e for e in entries if e.get("action") == "oom"]
    if ooms:
        size = int(ooms[0].get("size", 0))
        warnings.append(
            f"the run hit {len(ooms)} out-of-memory error(s); the first asked for {size:,} bytes"
        )
    return warnings
