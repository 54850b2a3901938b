"""Turn one recorded step into steady-state iterations and run the caching allocator over them.

The trace records setup (parameters, inputs), one forward and backward, the optimizer's first
step (which creates its state) and a second, steady, step. Training repeats the step, so the
replay runs the first iteration (forward, backward, first optimizer step) and then steady
iterations (forward, backward, steady optimizer step) with fresh allocation keys, and reads the
peaks over the last ones, as ``torch.cuda.reset_peak_memory_stats()`` after warm-up steps
would. Allocations made lazily and never freed (library workspaces, optimizer state) happen in
the first iteration only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings, CachingAllocatorSim
from memfit.trace.events import Trace

__all__ = ["Replay", "replay"]

_KEY_STRIDE = 1 << 32  # remapped key = original + iteration * stride


@dataclass
class Replay:
    """Allocator readings over the measured iterations.

    Attributes:
        peak_allocated, peak_reserved: peaks over the measured iterations.
        allocated, reserved: readings after each event of the first measured iteration.
        events: that iteration's events, as original trace keys (+alloc / -free).
        peak_event: index into ``events`` where ``allocated`` is highest.
        block_sizes: bytes the allocator counts for each original key (its block size).
        live_at_peak: original keys alive at the peak.
        num_alloc_retries: allocator retries (only with a memory limit).
    """

    peak_allocated: int
    peak_reserved: int
    allocated: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    event_phases: list = field(default_factory=list)
    peak_event: int = 0
    block_sizes: dict[int, int] = field(default_factory=dict)
    live_at_peak: set[int] = field(default_factory=set)
    num_alloc_retries: int = 0


def _segments(trace: Trace, marks: dict[str, int]) -> dict[str, range]:
    end = len(trace.events)
    forward = marks.get("forward", 0)
    if "optimizer0" not in marks:
        return {"setup": range(0, forward), "first": range(forward, end), "steady": range(0)}
    opt0, opt1 = marks["optimizer0"], marks.get("optimizer1", marks["zero_grad"])
    zero = marks["zero_grad"]
    return {
        "setup": range(0, forward),
        "fb": range(forward, opt0),
        "opt_first": range(opt0, opt1),
        "opt_steady": range(opt1, zero) if "optimizer1" in marks else range(opt0, opt1),
        "tail": range(zero, end),
    }


def _iterations(trace: Trace, marks: dict[str, int]) -> tuple[list[int], list[int], list[int]]:
    """Event indices of setup, of the first iteration and of a steady iteration."""
    parts = _segments(trace, marks)
    if "fb" not in parts:
        first = list(parts["first"])
        return list(parts["setup"]), first, first
    first = [*parts["fb"], *parts["opt_first"], *parts["tail"]]
    steady = [*parts["fb"], *parts["opt_steady"], *parts["tail"]]
    return list(parts["setup"]), first, steady


def replay(
    trace: Trace,
    marks: dict[str, int],
    settings: AllocatorSettings = DEFAULT_SETTINGS,
    *,
    warmup: int = 2,
    measured: int = 2,
) -> Replay:
    """Simulate setup, ``warmup`` iterations, then ``measured`` ones; peaks over the latter."""
    setup, first, steady = _iterations(trace, marks)
    freed = {-key for key in trace.events if key < 0}
    in_steady = {trace.events[i] for i in steady if trace.events[i] > 0}
    once = {key for key in in_steady if key not in freed}  # lazy, never freed: first time only
    sim = CachingAllocatorSim(settings)
    allocations = trace.allocations
    result = Replay(0, 0)

    def run(indices: list[int], iteration: int, record: bool) -> None:
        for index in indices:
            key = trace.events[index]
            original = abs(key)
            if allocations[original].host:
                continue
            persistent = iteration == 0 or original not in in_steady or original in once
            if iteration > 0 and original in once:
                continue
            sim_key = original if persistent else original + iteration * _KEY_STRIDE
            if key > 0:
                sim.malloc(sim_key, allocations[original].size, allocations[original].stream)
                if iteration <= warmup:
                    result.block_sizes[original] = sim.block_size(sim_key)
            else:
                try:
                    sim.free(sim_key)
                except KeyError:
                    continue
            if record:
                result.events.append(key)
                result.event_phases.append(trace.phases[index])
                result.allocated.append(sim.allocated)
                result.reserved.append(sim.reserved)

    run(setup, 0, False)
    run(first, 0, False)
    for iteration in range(1, warmup + measured):
        if iteration == warmup:
            sim.reset_peaks()
        run(steady, iteration, record=iteration == warmup)
    result.peak_allocated = sim.peak_allocated
    result.peak_reserved = sim.peak_reserved
    result.num_alloc_retries = sim.num_alloc_retries
    if result.allocated:
        result.peak_event = max(range(len(result.allocated)), key=result.allocated.__getitem__)
    result.live_at_peak = _live_at(trace, setup, first, result, once)
    return result


def _live_at(
    trace: Trace, setup: list[int], first: list[int], result: Replay, once: set[int]
) -> set[int]:
    live: set[int] = set()
    for index in (*setup, *first):
        key = trace.events[index]
        if trace.allocations[abs(key)].host:
            continue
        if key > 0:
            live.add(key)
        else:
            live.discard(-key)
    for key in result.events[: result.peak_event + 1]:
        if key > 0:
            live.add(key)
        else:
            live.discard(-key)
    return live
