"""Phases and categories of a snapshot recorded without stacks, from its allocation order alone.

``torch.cuda.memory._record_memory_history(context=None)`` (or ``stacks=None``) records sizes,
addresses and order but no Python frames, so ``frames.py`` cannot tell forward from backward.
A training loop still leaves its shape in the order of allocations and frees:

1. **Weights** are made first and live to the end: the allocations alive at the dump that were
   made before the first step's forward, and that a gradient of the same size matches (a
   workspace made early, a buffer or a frozen weight has none: other). The forward starts at
   the first allocation freed once backward has made a gradient (an activation it saved); a
   model may free temporaries while it is built (rotary embeddings' ``inv_freq``) before making
   its last weights (an untied LM head).
2. **Gradients** have the sizes of weights and are freed together when ``zero_grad()`` sets them
   to None: a burst of frees of weight-sized blocks, as many as half the weights or more, ends a
   step. They were made during that step's backward.
3. **Forward** runs from the step's start to where the most allocations made in the step are
   alive at once, before its first gradient (the saved activations are all alive there);
   **backward** from there until its last gradient is made and the last activation freed;
   the **optimizer** from there to the end of the step (through ``zero_grad``).
4. Categories follow from phase and lifetime: made in forward and freed by the step's end:
   activation; made in backward or the optimizer and freed in the step: temporary; made in the
   optimizer and kept: optimizer state; anything else kept across steps (inputs, library
   workspaces): other.

Known limitations:
    A loop that keeps its gradients between steps (``zero_grad(set_to_none=False)``) has no
    burst to end its steps: the trace is then left as recorded (everything in setup, "other").
    Buffers and frozen weights count as other. Modules cannot be named without stacks or
    memfit metadata.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from memfit.profile import Category, Phase
from memfit.snapshot.trace import Allocation, DeviceTrace

__all__ = ["infer_from_order", "has_phases", "ORDER_WARNING"]

ORDER_WARNING = (
    "this snapshot has no Python stacks or memfit metadata: phases and categories were inferred "
    "from the order of allocations (weights made first, gradients freed together by zero_grad); "
    "record with stacks='python' to have them read from the stacks and modules named"
)
_BURST_GAP = 64  # weight-sized frees this close, with no other allocation between: one burst


def has_phases(trace: DeviceTrace) -> bool:
    """Whether the recording itself told the phases (stacks or memfit metadata)."""
    return any(p is not Phase.SETUP for p in trace.phases)


def infer_from_order(trace: DeviceTrace) -> DeviceTrace | None:
    """The trace with phases and categories inferred from allocation order (module docstring).

    Returns:
        A new DeviceTrace, or None when no step structure is found (no weights, or no burst of
        gradient frees).
    """
    n, allocations = trace.num_events, trace.allocations
    made = [a for a in allocations if not a.before]
    first_free = min((a.end for a in made if a.end < n), default=n)
    weights = {k for k, a in enumerate(allocations) if a.end >= n and a.start < first_free}
    if not weights:
        return None
    weight_sizes = Counter(allocations[k].size for k in weights)
    bursts = _grad_bursts(allocations, weight_sizes, first_free, n, len(weights))
    if not bursts:
        return None
    # an early block no gradient matches is no trained weight: a library workspace (cuBLAS
    # makes one on the first matrix product), a buffer or a frozen weight
    grad_sizes = {allocations[k].size for burst in bursts for k in burst}
    weights = {k for k in weights if allocations[k].size in grad_sizes}
    later = _made_after_the_first_free(allocations, bursts, grad_sizes, first_free, n)
    if later:  # counted now, their gradients are found in every burst
        weights |= later
        weight_sizes = Counter(allocations[k].size for k in weights)
        bursts = _grad_bursts(allocations, weight_sizes, first_free, n, len(weights))
    # no more weights of a size than the first step has gradients of it: a kept block of a
    # weight's size made with the model (the batch, a mask) is not one; the latest go
    grads_by_size = Counter(allocations[k].size for k in bursts[0])
    for size, count in weight_sizes.items():
        if count > grads_by_size[size]:
            same = sorted((allocations[k].start, k) for k in weights if allocations[k].size == size)
            weights -= {k for _, k in same[grads_by_size[size] :]}
    setup_end = max(allocations[k].start for k in weights) + 1
    steps = _steps(allocations, bursts, setup_end)
    phases = np.full(n, _code(Phase.SETUP), dtype=np.int8)
    grads: set[int] = set()
    for step in steps:
        grads |= step.grads
        phases[step.start : step.backward] = _code(Phase.FORWARD)
        phases[step.backward : step.optimizer] = _code(Phase.BACKWARD)
        phases[step.optimizer : step.end] = _code(Phase.OPTIMIZER)
    ends = [s.end for s in steps]
    step_end = np.full(n + 1, n, dtype=np.int64)  # the end of the step each event is in
    for start, end in zip([setup_end] + ends[:-1], ends, strict=True):
        step_end[start:end] = end
    by_code = list(Phase)
    updated = []
    for k, a in enumerate(allocations):
        phase = by_code[phases[a.start]] if a.start >= 0 else Phase.SETUP
        category = _category(k, a, phase, weights, grads, int(step_end[max(a.start, 0)]))
        updated.append(dataclasses.replace(a, phase=phase, category=category))
    return dataclasses.replace(
        trace,
        allocations=tuple(updated),
        phases=tuple(by_code[c] for c in phases),
        warnings=trace.warnings + (ORDER_WARNING,),
    )


def _made_after_the_first_free(
    allocations: tuple[Allocation, ...],
    bursts: list[set[int]],
    grad_sizes: set[int],
    first_free: int,
    n: int,
) -> set[int]:
    """Weights made after the model's construction freed its first temporary: a model that
    computes a buffer from temporaries in ``__init__`` (rotary embeddings' ``inv_freq``) before
    making its last modules (Hugging Face LLaMA's untied ``lm_head``). Construction ends where
    the first step's forward starts: at the first allocation that lives until backward (an
    activation freed once the first gradient exists). Kept blocks of a gradient's size made
    before it are weights."""
    first_grad = min(allocations[k].start for k in bursts[0])
    forward_start = min(
        (a.start for a in allocations if a.start >= first_free and first_grad <= a.end < n),
        default=first_free,
    )
    return {
        k
        for k, a in enumerate(allocations)
        if first_free <= a.start < forward_start and a.end >= n and a.size in grad_sizes
    }


def _code(phase: Phase) -> int:
    return list(Phase).index(phase)


def _category(
    k: int, a: Allocation, phase: Phase, weights: set[int], grads: set[int], step_end: int
) -> Category:
    if k in weights:
        return Category.PARAM
    if k in grads:
        return Category.GRAD
    kept = a.end > step_end
    if phase is Phase.FORWARD:
        return Category.OTHER if kept else Category.ACTIVATION
    if phase is Phase.BACKWARD:
        return Category.OTHER if kept else Category.TEMPORARY
    if phase is Phase.OPTIMIZER:
        return Category.OPTIMIZER if kept else Category.TEMPORARY
    return Category.OTHER


def _grad_bursts(
    allocations: tuple[Allocation, ...],
    weight_sizes: Counter[int],
    first_free: int,
    n: int,
    num_weights: int,
) -> list[set[int]]:
    """The gradients of each step, oldest step first: in each burst of weight-sized frees (a
    ``zero_grad``), the earliest-made block of each weight's size, one per weight. A burst
    may also hold an optimizer's weight-sized temporaries (foreach Adam's), made after them."""
    other_allocs = np.zeros(n + 1, dtype=np.int64)  # allocations of other sizes before event i
    for a in allocations:
        if a.start >= 0 and a.size not in weight_sizes:
            other_allocs[a.start + 1] += 1
    other_allocs = np.cumsum(other_allocs)
    frees = sorted(
        (a.end, k)
        for k, a in enumerate(allocations)
        if a.start >= first_free and a.end < n and a.size in weight_sizes
    )
    groups: list[list[tuple[int, int]]] = []
    for end, k in frees:
        last = groups[-1][-1][0] if groups else None
        if (
            last is not None
            and end - last <= _BURST_GAP
            and other_allocs[end] == other_allocs[last]
        ):
            groups[-1].append((end, k))
        else:
            groups.append([(end, k)])
    wanted = max(2, num_weights // 2)
    kept = sorted(
        (a.start, a.end) for a in allocations if a.start >= first_free and a.size in weight_sizes
    )
    bursts = []
    for group in groups:
        if len(group) < wanted:
            continue
        by_start = sorted((allocations[k].start, k) for _, k in group)
        state = _first_state(kept, by_start[0][0], max(end for end, _ in group))
        left = Counter(weight_sizes)
        grads = set()
        for start, k in by_start:
            if start > state:  # an optimizer's temporary: made after its state, in step()
                break
            if left[allocations[k].size] > 0:
                left[allocations[k].size] -= 1
                grads.add(k)
        bursts.append(grads)
    return bursts


def _first_state(kept: list[tuple[int, int]], first_grad: int, burst_end: int) -> int:
    """When the step's optimizer made its first state (a weight-sized block made after the
    first gradient and kept past ``zero_grad``); ``burst_end`` when it made none.

    Gradients are made before it. Without this, a size with more blocks kept from the start
    than gradients (a buffer or workspace of a weight's size) would take a foreach optimizer's
    weight-sized temporary of the first step as a gradient, and the state made before that
    temporary would fall in backward (other, not optimizer state).
    """
    for start, end in kept:
        if first_grad < start < burst_end and end > burst_end:
            return start
    return burst_end


@dataclasses.dataclass(frozen=True)
class _Step:
    start: int
    backward: int
    optimizer: int
    end: int  # one past the step's last event
    grads: set[int]


def _steps(
    allocations: tuple[Allocation, ...], bursts: list[set[int]], setup_end: int
) -> list[_Step]:
    steps = []
    start = setup_end
    for burst in bursts:
        end = max(allocations[k].end for k in burst) + 1  # after zero_grad: the step's end
        first_grad = min(allocations[k].start for k in burst)
        backward = _forward_end(allocations, start, first_grad)
        last_grad = max(allocations[k].start for k in burst)
        zero_grad = min(allocations[k].end for k in burst)
        freed = [a.end for a in allocations if start <= a.start < backward <= a.end < zero_grad]
        optimizer = max([last_grad, *freed]) + 1
        steps.append(_Step(start, backward, min(optimizer, end), end, burst))
        start = end
    return steps


def _forward_end(allocations: tuple[Allocation, ...], start: int, first_grad: int) -> int:
    """One past the event at which the most allocations made since ``start`` are alive, before
    ``first_grad`` (the end of forward: every saved activation is alive there)."""
    if first_grad <= start:
        return start
    count = np.zeros(first_grad - start + 1, dtype=np.int64)
    for a in allocations:
        if start <= a.start < first_grad:
            count[a.start - start] += 1
            if a.end < first_grad:
                count[a.end - start] -= 1
    alive = np.cumsum(count[:-1])
    return start + int(np.argmax(alive)) + 1
