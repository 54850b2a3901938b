"""Explain a measured run: a PyTorch memory snapshot as a MemoryProfile.

The profile has the schema of a prediction, so every view of the report (peak by category, live
memory over the step, activation memory per module) draws measured data the same way.

Categories at the peak come from each allocation's phase and lifetime (phases from the
stacks, or, for a snapshot recorded without them, from the order of allocations: ``order.py``):
made by ``torch.nn`` before the step: param; made in forward and freed by the end of backward:
activation; made in backward and still alive after it: grad (otherwise temporary); made in the
optimizer step and still alive after it: optimizer state (otherwise temporary); anything else,
library workspaces included: other. memfit metadata (see ``snapshot_frames``) overrides this guess.

Known limitations:
    * Buffers are counted as params, and inputs as other, unless metadata says so.
    * The snapshot does not name the GPU model: pass ``device`` for the verdict and budget line.
    * Live bytes are the requested sizes rounded to 512 B; ``max_memory_allocated`` can be a
      little higher where the allocator handed out a block larger than asked for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from memfit.devices import DeviceSpec
from memfit.profile import Category, LiveTensor, MemoryProfile, ModuleMemory, Phase, TimelineEvent
from memfit.snapshot.order import has_phases, infer_from_order
from memfit.snapshot.thin import thin_indices
from memfit.snapshot.trace import Allocation, DeviceTrace, replay

__all__ = ["snapshot_profile", "categorize", "TIMELINE_POINTS"]

TIMELINE_POINTS = 3000
_NUM_ALIVE = 12


def snapshot_profile(
    snapshot: Mapping[str, Any],
    *,
    name: str = "snapshot",
    device: DeviceSpec | None = None,
    device_index: int | None = None,
) -> tuple[MemoryProfile, DeviceTrace]:
    """Build the profile of a recorded run from its snapshot.

    Args:
        snapshot: the data returned by :func:`memfit.snapshot.load.load_snapshot`.
        name: what to call the run (the file name).
        device: the GPU it ran on, for the verdict; None leaves the device memory at 0.
        device_index: which CUDA device's history to read (default: the longest).

    Returns:
        The profile and the replayed trace it came from (for the fragmentation view).
    """
    trace = replay(snapshot, device_index)
    if not has_phases(trace):  # no stacks, no metadata: read the phases from allocation order
        trace = infer_from_order(trace) or trace
    categories = categorize(trace)
    peak = trace.peak_index
    alive = [k for k, a in enumerate(trace.allocations) if a.start <= peak < a.end]
    by_category = {c: 0 for c in Category}
    for k in alive:
        by_category[categories[k]] += trace.allocations[k].rounded
    peak_alloc = _allocation_at(trace, peak)
    largest = sorted(alive, key=lambda k: -trace.allocations[k].rounded)[:_NUM_ALIVE]
    return (
        MemoryProfile(
            source="snapshot",
            model=name,
            device=device.name if device else f"cuda:{trace.device}",
            device_memory=device.memory_bytes if device else 0,
            precision="as recorded",
            optimizer=None,
            batch="as recorded",
            peak_allocated=trace.peak_allocated,
            peak_reserved=trace.peak_reserved,
            by_category={c: v for c, v in by_category.items() if v},
            modules=_modules(trace, categories),
            timeline=_timeline(trace),
            peak_phase=trace.phases[peak] if trace.num_events else Phase.SETUP,
            peak_module=peak_alloc.module if peak_alloc else "",
            peak_op=peak_alloc.where if peak_alloc else "",
            alive_at_peak=tuple(
                LiveTensor(
                    num_bytes=trace.allocations[k].rounded,
                    category=categories[k],
                    module=trace.allocations[k].module,
                    op=trace.allocations[k].where,
                )
                for k in largest
            ),
            warnings=trace.warnings,
        ),
        trace,
    )


def categorize(trace: DeviceTrace) -> list[Category]:
    """The category of each allocation of ``trace`` (see the module docstring).

    Two refinements keep library workspaces (cuBLAS allocates one per stream on its first
    matrix product and keeps it) out of activations and gradients: a forward allocation still
    alive after the backward pass that follows is "other", and so is a backward allocation that
    outlives its backward pass but matches the size of no weight (gradients match their weight).
    """
    run_end = _phase_run_ends(trace.phases)
    backward_end = _next_backward_end(trace.phases, run_end)
    out: list[Category | None] = [a.category for a in trace.allocations]
    weights = {a.size for a, c in zip(trace.allocations, out, strict=True) if c is Category.PARAM}
    for k, a in enumerate(trace.allocations):
        if out[k] is not None:
            continue
        if a.phase is Phase.FORWARD:
            outlives = a.end > backward_end[a.start]
            out[k] = Category.OTHER if outlives else Category.ACTIVATION
        elif a.phase is Phase.BACKWARD and not a.before:
            kept = a.end > run_end[a.start]
            grad = not weights or a.size in weights
            out[k] = (Category.GRAD if grad else Category.OTHER) if kept else Category.TEMPORARY
        elif a.phase is Phase.OPTIMIZER and not a.before:
            out[k] = Category.OPTIMIZER if a.end > run_end[a.start] else Category.TEMPORARY
        else:
            out[k] = Category.OTHER
    return [c if c is not None else Category.OTHER for c in out]


def _next_backward_end(phases: tuple[Phase, ...], run_end: np.ndarray) -> np.ndarray:
    """For each event, where the next backward pass (at or after it) ends; past the end if none."""
    n = len(phases)
    ends = np.full(n + 1, n + 1, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        ends[i] = run_end[i] if phases[i] is Phase.BACKWARD else ends[i + 1]
    return ends


def _phase_run_ends(phases: tuple[Phase, ...]) -> np.ndarray:
    """For each event, the index of the first later event in another phase (or the end)."""
    n = len(phases)
    ends = np.full(n, n, dtype=np.int64)
    for i in range(n - 2, -1, -1):
        ends[i] = i + 1 if phases[i + 1] is not phases[i] else ends[i + 1]
    return ends


def _allocation_at(trace: DeviceTrace, index: int) -> Allocation | None:
    for a in trace.allocations:
        if a.start == index and not a.before:
            return a
    return None


def _forward_end(trace: DeviceTrace) -> int:
    """The last forward event before a backward one, nearest the peak (else the peak)."""
    ph = trace.phases
    ends = [i for i in range(len(ph) - 1) if ph[i] is Phase.FORWARD and ph[i + 1] is Phase.BACKWARD]
    peak = trace.peak_index
    return min(ends, key=lambda i: (abs(i - peak), i)) if ends else peak


def _modules(trace: DeviceTrace, categories: list[Category]) -> tuple[ModuleMemory, ...]:
    """Activation bytes alive at the end of forward, by module (or by source line)."""
    at = _forward_end(trace)
    own: dict[str, int] = defaultdict(int)
    types: dict[str, str] = {}
    for a, cat in zip(trace.allocations, categories, strict=True):
        if a.module and a.module_type:
            types[a.module] = a.module_type
        if cat is Category.ACTIVATION and a.start <= at < a.end:
            own[a.module or a.where or "(no stack)"] += a.rounded
    named = any(a.module for a in trace.allocations)
    if not named and not any(a.where for a in trace.allocations):
        return ()  # no stacks, no metadata: nothing names a module
    total: dict[str, int] = defaultdict(int)
    for label, num_bytes in own.items():
        total[label] += num_bytes
        if named:  # add to every ancestor: "layers.0.attn" counts in "layers.0" and "layers"
            parts = label.split(".")
            for k in range(1, len(parts)):
                total[".".join(parts[:k])] += num_bytes
    return tuple(
        ModuleMemory(
            fqn=label,
            module_type=types.get(label, "") if named else "source line",
            activation_bytes=total[label],
            self_activation_bytes=own.get(label, 0),
        )
        for label in sorted(total, key=lambda k: (-own.get(k, 0), k))
    )


def _timeline(trace: DeviceTrace) -> tuple[TimelineEvent, ...]:
    if not trace.num_events:
        return ()
    changes = [i for i in range(1, trace.num_events) if trace.phases[i] is not trace.phases[i - 1]]
    # keep phase boundaries exact unless there are so many (long recordings) that they would
    # defeat the thinning; then bands are drawn at the thinned resolution
    keep = changes + [i - 1 for i in changes] if len(changes) <= TIMELINE_POINTS // 8 else []
    index = thin_indices(trace.allocated, TIMELINE_POINTS, keep=keep)
    return tuple(
        TimelineEvent(
            index=int(i),
            phase=trace.phases[i],
            allocated=int(trace.allocated[i]),
            reserved=int(trace.reserved[i]),
        )
        for i in index
    )
