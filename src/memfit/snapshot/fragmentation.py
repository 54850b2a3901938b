"""Fragmentation of a recorded run: the floor, the ideal, what was reserved, and what would help.

Three numbers bound the memory of a run:

* **live peak**: the most bytes alive at once; no allocator can use less.
* **ideal packing**: the smallest arena that holds every allocation of the run at fixed
  addresses, knowing all lifetimes in advance (``packing.pack``); the limit for any allocator.
* **reserved peak**: what PyTorch's caching allocator actually held (``max_memory_reserved``).

Reserved minus ideal is what a better allocator policy could win back. To say which setting would,
the run's allocations are replayed through memfit's caching-allocator simulator
(``memfit.trace.allocator``) under the recorded settings and under alternatives such as
``expandable_segments:True``; the saving is the simulated difference, so a constant bias of the
simulator cancels out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memfit.snapshot.packing import Interval, pack
from memfit.snapshot.trace import DeviceTrace
from memfit.trace.allocator import AllocatorSettings, CachingAllocatorSim
from memfit.units import format_bytes

__all__ = [
    "Fragmentation",
    "SettingPrediction",
    "analyze",
    "simulated_reserved",
    "CANDIDATE_SETTINGS",
]

# (label as PYTORCH_CUDA_ALLOC_CONF, keyword arguments of AllocatorSettings)
CANDIDATE_SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("expandable_segments:True", {"expandable_segments": True}),
    ("max_split_size_mb:512", {"max_split_size_mb": 512}),
    ("max_split_size_mb:128", {"max_split_size_mb": 128}),
)
_WORTH_IT = 0.02  # recommend a setting only if it saves at least 2% of the reserved peak


@dataclass(frozen=True, slots=True)
class SettingPrediction:
    """The simulated reserved peak of the run under one allocator setting."""

    setting: str
    peak_reserved: int
    saving: int  # against the simulated run with its recorded settings (positive = less memory)


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """Live, ideal and reserved memory of one run, and the allocator settings that would help."""

    live_peak: int
    ideal: int
    reserved_peak: int
    packing_method: str
    recorded_settings: str
    simulated_reserved: int | None = None
    predictions: tuple[SettingPrediction, ...] = ()
    note: str = ""

    @property
    def packing_waste(self) -> int:
        """Bytes reserved above the ideal packing: what a better placement could save."""
        return max(0, self.reserved_peak - self.ideal)

    @property
    def best(self) -> SettingPrediction | None:
        good = [p for p in self.predictions if p.saving >= _WORTH_IT * self.reserved_peak]
        return max(good, key=lambda p: p.saving) if good else None

    def advice(self) -> str:
        """One sentence: which setting to use and what it saves, or why none is needed."""
        best = self.best
        if best is not None:
            return (
                f"set PYTORCH_CUDA_ALLOC_CONF={best.setting}: the allocator simulator predicts "
                f"{format_bytes(best.saving)} less reserved memory "
                f"({100 * best.saving / max(1, self.reserved_peak):.1f}% of the peak)"
            )
        if self.note:
            return self.note
        return (
            f"no allocator setting saves more than {100 * _WORTH_IT:.0f}%: reserved memory is "
            f"{format_bytes(self.packing_waste)} above the ideal packing"
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["advice"] = self.advice()
        return data


def analyze(
    trace: DeviceTrace,
    *,
    candidates: Sequence[tuple[str, Mapping[str, Any]]] = CANDIDATE_SETTINGS,
    progress: Callable[[int], None] | None = None,
) -> Fragmentation:
    """Measure fragmentation of a replayed snapshot and predict the effect of allocator settings.

    Args:
        trace: a replayed snapshot (``snapshot_trace.replay``).
        candidates: settings to try in the simulator, as (label, AllocatorSettings kwargs).
        progress: called with the number of allocations placed, for a progress bar.
    """
    intervals = [Interval(a.start, a.end, a.rounded) for a in trace.allocations]
    packing = pack(intervals, progress=progress)
    recorded = _recorded_settings(trace.settings)
    base = Fragmentation(
        live_peak=packing.live_peak,
        ideal=packing.height,
        reserved_peak=trace.peak_reserved,
        packing_method=packing.method,
        recorded_settings=_label(recorded),
    )
    as_run = _simulate(trace, AllocatorSettings(**recorded), CachingAllocatorSim)
    predictions = []
    for label, kwargs in candidates:
        if all(recorded.get(k) == v for k, v in kwargs.items()):
            continue  # already in use
        settings = AllocatorSettings(**{**recorded, **kwargs})
        peak = _simulate(trace, settings, CachingAllocatorSim)
        predictions.append(SettingPrediction(label, peak, as_run - peak))
    return dataclasses.replace(base, simulated_reserved=as_run, predictions=tuple(predictions))


def simulated_reserved(trace: DeviceTrace) -> int:
    """The reserved peak of ``trace`` replayed through the simulator with its recorded settings."""
    return _simulate(
        trace, AllocatorSettings(**_recorded_settings(trace.settings)), CachingAllocatorSim
    )


def _recorded_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"expandable_segments": bool(settings.get("expandable_segments", False))}
    split = int(settings.get("max_split_size", -1) or -1)
    # PyTorch reports "no limit" as SIZE_MAX (or -1 in older versions)
    if 0 < split < 2**62:
        out["max_split_size_mb"] = split // 2**20
    return out


def _label(settings: Mapping[str, Any]) -> str:
    parts = [f"expandable_segments:{settings.get('expandable_segments', False)}"]
    if settings.get("max_split_size_mb"):
        parts.append(f"max_split_size_mb:{settings['max_split_size_mb']}")
    return ",".join(parts)


def _simulate(trace: DeviceTrace, settings: Any, sim_class: Any) -> int:
    """Replay every allocation in event order through the simulator; its reserved peak.

    Where the recording shows segments given back (``torch.cuda.empty_cache()``, or the
    allocator freeing its cache to retry a failed ``cudaMalloc``), the simulator empties its
    cache at the same point, once per run of such events.
    """
    sim = sim_class(settings)
    events: list[tuple[int, int, int]] = []  # (time, 0 release / 1 free / 2 alloc, number)
    for k, a in enumerate(trace.allocations):
        events.append((a.start, 2, k))
        if a.end < trace.num_events:
            events.append((a.end, 1, k))
    drop = np.diff(trace.reserved, prepend=trace.reserved[:1]) < 0  # a segment given back
    first_of_run = drop & ~np.concatenate(([False], drop[:-1]))
    events += [(int(i), 0, 0) for i in np.flatnonzero(first_of_run)]
    events.sort()
    for _, kind, k in events:
        if kind == 0:
            sim.empty_cache()
        elif kind == 2:
            a = trace.allocations[k]
            sim.malloc(k, a.size, a.stream)
        else:
            sim.free(k)
    return int(sim.peak_reserved)
