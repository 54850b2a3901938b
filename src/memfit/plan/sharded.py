"""Planning for N GPUs: which FSDP2 sharding, combined with the one-GPU techniques.

The ways of sharding weighed, in the order they are tried (expected fastest first):

1. FSDP2 with one unit per repeated block, each block's weights kept gathered from forward to
   backward (``reshard_after_forward=False``: one all-gather per block and step instead of two);
2. HSDP when the job spans nodes (N > GPUs per node): shard within a node, replicate across
   nodes, so the all-gathers stay on NVLink;
3. FSDP2 resharding every block after its forward (ZeRO-3: the least memory);
4. the same with ``CPUOffloadPolicy`` (shards, gradients and the optimizer step on the host).

Each is traced once (one rank, fake process group). The fastest that fits the per-rank budget
with nothing else is the plan; otherwise the one-GPU search (fusions, checkpointing, micro-batches,
chunked loss) runs on top of each way that did not fit, fastest first, and the fastest plan
found wins. Every way weighed is on the plan's frontier.

Known limitations:
    * Units are the repeated blocks (one ``fully_shard`` per block, then the root); finer or
      coarser units are not weighed, nor ``MixedPrecisionPolicy`` (it changes the math).
    * HSDP's shard group is one node (``memfit.collectives.links_of``'s GPUs per node).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from memfit.collectives import links_of
from memfit.devices import get_device
from memfit.errors import BudgetInfeasibleError, InvalidInputError
from memfit.plan.frontier import FrontierPoint
from memfit.plan.plan import Plan
from memfit.structure.blocks import block_patterns, find_blocks
from memfit.techniques import Sharding, technique_label
from memfit.units import format_bytes

__all__ = ["sharding_options", "plan_sharded", "check_gpus"]


def sharding_options(units: tuple[str, ...], gpus: int, per_node: int) -> list[Sharding]:
    """The ways of sharding weighed, in the order they are tried (module docstring)."""
    options = []
    if units:
        options.append(Sharding(gpus=gpus, units=units, keep_unsharded=units))
    if gpus > per_node and gpus % per_node == 0:
        options.append(Sharding(gpus=gpus, units=units, replicate=gpus // per_node))
    options.append(Sharding(gpus=gpus, units=units))
    options.append(Sharding(gpus=gpus, units=units, offload=True))
    return options


def plan_sharded(search: Any) -> Plan:
    """The plan for ``search.settings.gpus`` GPUs (``search``: the planner's ``Search``, its
    unmodified one-GPU step traced)."""
    gpus = search.settings.gpus
    module = search.base.model.module
    blocks = search.settings.blocks
    names = list(find_blocks(module)) if blocks is None else list(blocks)
    units = block_patterns(module, names) if blocks is None else tuple(names)
    per_node = links_of(get_device(search.step.device)).gpus_per_node
    single = FrontierPoint("1 GPU, unmodified", search.unmodified_peak, search.baseline_s)
    weighed: list[FrontierPoint] = [single]
    plans: list[Plan] = []
    notes = [
        f"sharded over {gpus} GPUs: memory and time are per rank; the batch is each rank's; "
        f"sharding cannot be undone (plan.undo refuses it: rebuild the model instead)"
    ]
    for option in sharding_options(units, gpus, per_node):
        if option.offload and plans:
            break  # offloading is the last resort
        label = technique_label(option)
        search.report(f"tracing {label}")
        search.first, search.first_label = (option,), label
        search.base = search.trace()
        profile = search.base.profile
        weighed.append(FrontierPoint(label, profile.peak_reserved, profile.step_time_s or 0.0))
        if search.fits(search.base):
            plans.append(search.make((), search.base))
            break  # the fastest ways come first: what follows is no faster alone
        try:
            plans.append(search.search())
        except BudgetInfeasibleError as error:
            notes.append(f"{label}: no plan fits ({error.args[0].split(';')[0]})")
        if len(plans) >= 2:
            break  # two ways with techniques on top weighed: enough for the time it takes
    if not plans:
        raise BudgetInfeasibleError(
            f"no way of sharding over {gpus} GPUs fits the budget of "
            f"{format_bytes(search.settings.budget)} per rank with any combination of "
            f"techniques; the smallest weighed needs "
            f"{format_bytes(min(p.peak_reserved for p in weighed))} per rank. Use more GPUs "
            f"(--gpus), a smaller batch, or allow techniques that change the math (--allow)"
        )
    best = min(plans, key=lambda p: p.step_time_s or float("inf"))
    chosen_label = best.label
    frontier = [
        dataclasses.replace(p, chosen=False)
        for p in [*weighed, *(q for plan in plans for q in plan.frontier)]
        if p.label != "unmodified"
    ]
    if not any(p.label == chosen_label for p in frontier):
        profile = best.profile
        peak = profile.peak_reserved if profile else 0
        frontier.append(FrontierPoint(chosen_label, peak, best.step_time_s or 0.0))
    frontier = [dataclasses.replace(p, chosen=p.label == chosen_label) for p in frontier]
    return dataclasses.replace(
        best,
        frontier=tuple(_unique(frontier)),
        baseline_step_time_s=search.baseline_s,
        notes=(*notes, *best.notes),
    )


def _unique(points: list[FrontierPoint]) -> list[FrontierPoint]:
    seen: dict[str, FrontierPoint] = {}
    for point in points:
        if point.label not in seen or point.chosen:
            seen[point.label] = point
    return list(seen.values())


def check_gpus(gpus: Any) -> int:
    """``gpus`` checked: a whole number of at least 1."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidInputError(
            f"gpus={gpus!r} must be a whole number of GPUs (1 for one GPU, e.g. 8 to shard "
            f"over 8 GPUs with FSDP2)"
        )
    return gpus
