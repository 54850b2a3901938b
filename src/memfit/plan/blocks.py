"""What each checkpointable block costs, read off a traced step.

From one traced, unmodified step: for each block, the time of its forward operators, CPU and GPU
overlapped (what full recomputation costs again) and, per operator kind, the bytes its outputs
occupy and the time
they take (what selective checkpointing trades: keep an operator's outputs, or recompute it).
Blocks found by ``memfit.structure.blocks.find_blocks`` are usually identical, so one block's
figures stand for all ("identical blocks solved once").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from memfit.cost import overlapped_seconds
from memfit.profile import Phase
from memfit.trace.allocator import round_size
from memfit.trace.estimate import StepTrace

__all__ = ["OpGroup", "BlockStats", "block_stats"]


@dataclass(frozen=True)
class OpGroup:
    """All outputs of one operator kind inside a block's forward."""

    op: str  # overload packet name, e.g. "mm", "gelu", "native_dropout"
    output_bytes: int
    seconds: float


@dataclass(frozen=True)
class BlockStats:
    """One block's forward time, saved activations and operator groups (unmodified step).

    Attributes:
        saved_bytes: activations the block keeps for backward without checkpointing.
        kept_full_bytes: what it keeps under full checkpointing (its output, which the next
            block's checkpoint keeps as input); filled in from a fully checkpointed trace.
    """

    name: str
    forward_s: float
    saved_bytes: int
    groups: tuple[OpGroup, ...] = field(default=())
    kept_full_bytes: int = 0
    forward_ops: int = 0


def _inside(module: str, block: str) -> bool:
    return module == block or module.startswith(block + ".")


def block_stats(traced: StepTrace, blocks: list[str]) -> list[BlockStats]:
    """Per-block figures of the unmodified step ``traced``."""
    sequences: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    group_time: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for op in traced.record.ops:
        if op.stage != "forward":
            continue
        for block in blocks:
            if _inside(op.module, block):
                sequences[block].append((op.host_s, op.seconds, op.synchronises))
                # recomputed alone, an operator costs the slower of issuing and running it
                group_time[block][op.op.split(".")[0]] += max(op.seconds, op.host_s)
                break
    times = {block: overlapped_seconds(ops) for block, ops in sequences.items()}
    counts = {block: len(ops) for block, ops in sequences.items()}
    group_bytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for allocation in traced.trace.allocations.values():
        if allocation.phase is not Phase.FORWARD or allocation.host or " (" in allocation.op:
            continue  # hidden scratch is not an operator output one could keep
        for block in blocks:
            if _inside(allocation.module, block):
                group_bytes[block][allocation.op.split(".")[0]] += round_size(allocation.size)
                break
    saved = {m.fqn: m.activation_bytes for m in traced.profile.modules}
    outputs = _block_outputs(traced, blocks)
    stats = []
    for block in blocks:
        names = set(group_time[block]) | set(group_bytes[block])
        groups = tuple(
            OpGroup(name, group_bytes[block].get(name, 0), group_time[block].get(name, 0.0))
            for name in sorted(names)
        )
        kept = outputs.get(block, 0)
        stats.append(
            BlockStats(
                block,
                times.get(block, 0.0),
                saved.get(block, 0),
                groups,
                kept,
                counts.get(block, 0),
            )
        )
    return stats


def _block_outputs(traced: StepTrace, blocks: list[str]) -> dict[str, int]:
    """Each block's output: its last allocation still alive when forward ends.

    Under full checkpointing that is all a block keeps (the next block's checkpoint holds it
    as its input).
    """
    live: set[int] = set()
    last: dict[str, int] = {}
    for key in traced.trace.events[: traced.marks.get("backward", 0)]:
        if key < 0:
            live.discard(-key)
            continue
        live.add(key)
        allocation = traced.trace.allocations[key]
        if allocation.phase is Phase.FORWARD and " (" not in allocation.op:
            for block in blocks:
                if _inside(allocation.module, block):
                    last[block] = key
                    break
    return {
        block: round_size(traced.trace.allocations[key].size)
        for block, key in last.items()
        if key in live
    }
