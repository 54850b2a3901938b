"""Build a MemoryProfile from a recorded trace and its allocator replay."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from memfit.profile import Category, LiveTensor, MemoryProfile, ModuleMemory, Phase, TimelineEvent
from memfit.trace.allocator import round_size
from memfit.trace.events import Trace, local_tensor
from memfit.trace.replay import Replay

__all__ = ["assemble_profile", "thin_timeline", "module_table", "trainable_param_bytes"]

MAX_TIMELINE_POINTS = 2000


def thin_timeline(replay: Replay, trace: Trace, limit: int = MAX_TIMELINE_POINTS) -> tuple:
    """At most ``limit`` points; each bucket keeps its highest reading, so peaks survive."""
    count = len(replay.allocated)
    if count == 0:
        return ()
    bucket = max(1, -(-count // limit))
    points = []
    for start in range(0, count, bucket):
        stop = min(count, start + bucket)
        best = max(range(start, stop), key=replay.allocated.__getitem__)
        key = abs(replay.events[best])
        allocation = trace.allocations[key]
        points.append(
            TimelineEvent(
                index=best,
                phase=replay.event_phases[best],
                allocated=replay.allocated[best],
                reserved=replay.reserved[best],
                module=allocation.module,
                op=allocation.op,
            )
        )
    return tuple(points)


def _ancestors(fqn: str) -> Iterable[str]:
    yield fqn
    while fqn:
        fqn = fqn.rpartition(".")[0]
        yield fqn


def module_table(
    root: nn.Module, trace: Trace, live_after_forward: set[int], grads: dict[str, int]
) -> tuple[ModuleMemory, ...]:
    """Per-module memory in model order: parameters, gradients, saved activations."""
    inclusive: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    for key in live_after_forward:
        allocation = trace.allocations[key]
        if allocation.category is not Category.ACTIVATION or allocation.host:
            continue
        size = round_size(allocation.size)
        own[allocation.module] += size
        for name in _ancestors(allocation.module):
            inclusive[name] += size
    rows = []
    for name, module in root.named_modules():
        param_bytes = sum(local_tensor(p).numel() * p.element_size() for p in module.parameters())
        rows.append(
            ModuleMemory(
                fqn=name,
                module_type=type(module).__name__,
                param_bytes=param_bytes,
                grad_bytes=sum(v for k, v in grads.items() if _within(k, name)),
                activation_bytes=inclusive.get(name, 0),
                self_activation_bytes=own.get(name, 0),
            )
        )
    return tuple(rows)


def _within(param_name: str, module_name: str) -> bool:
    return not module_name or param_name.startswith(module_name + ".")


def assemble_profile(
    *,
    trace: Trace,
    replay: Replay,
    modules: tuple[ModuleMemory, ...],
    header: dict,
    outside_pytorch: dict[str, int],
    warnings: tuple[str, ...],
) -> MemoryProfile:
    by_category = {category: 0 for category in Category}
    alive = []
    for key in replay.live_at_peak:
        allocation = trace.allocations[key]
        size = replay.block_sizes.get(key, round_size(allocation.size))
        by_category[allocation.category] += size
        alive.append((size, allocation))
    alive.sort(key=lambda item: -item[0])
    peak_key = abs(replay.events[replay.peak_event]) if replay.events else 0
    peak_allocation = trace.allocations.get(peak_key)
    return MemoryProfile(
        **header,
        peak_allocated=replay.peak_allocated,
        peak_reserved=replay.peak_reserved,
        by_category=by_category,
        modules=modules,
        timeline=thin_timeline(replay, trace),
        peak_phase=peak_allocation.phase if peak_allocation else Phase.FORWARD,
        peak_module=peak_allocation.module if peak_allocation else "",
        peak_op=peak_allocation.op if peak_allocation else "",
        alive_at_peak=tuple(
            LiveTensor(
                num_bytes=size,
                category=a.category,
                module=a.module,
                op=a.op,
                shape=a.shape,
                dtype=a.dtype,
            )
            for size, a in alive[:12]
        ),
        outside_pytorch=outside_pytorch,
        warnings=warnings,
    )


def trainable_param_bytes(params: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of each parameter that gets a gradient."""
    return {n: p.numel() * p.element_size() for n, p in params.items() if p.requires_grad}
