"""The planner's settings: the budget (checked against the device), what it may choose, how
hard it looks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memfit.devices import DeviceSpec
from memfit.errors import InvalidInputError
from memfit.units import format_bytes, parse_bytes

__all__ = ["PlanSettings", "CHUNK_BYTES", "budget_bytes", "budget_note"]


CHUNK_BYTES = 512 * 2**20
"""Float32 logits of one slice of the chunked loss, at most (vocabularies of 128k and more at
tens of thousands of tokens otherwise leave gigabytes per slice)."""


@dataclass(frozen=True)
class PlanSettings:
    """What the search may do and how hard it looks (``plan``'s arguments, checked).

    Attributes:
        budget: the reserved-memory budget in bytes.
        allow: names of the techniques it may choose (``memfit.techniques.TABLE``).
        blocks: module patterns that may be checkpointed; None: the repeated blocks.
        head, chunks: the LM head and the (least) number of slices of a chunked loss; more
            when a slice's float32 logits would exceed ``CHUNK_BYTES``.
        max_micro_batches: the most micro-batches a plan splits a batch into.
        margin: fraction of the budget kept free for prediction error.
        max_traces: candidates traced in full before giving up on the screening order.
    """

    budget: int
    allow: tuple[str, ...]
    blocks: Sequence[str] | None = None
    head: str = "lm_head"
    chunks: int = 4
    max_micro_batches: int = 8
    margin: float = 0.02
    max_traces: int = 6

    @property
    def target(self) -> int:
        """The predicted reserved peak a plan may reach."""
        return int(self.budget * (1 - self.margin))


_NOMINAL_SLACK = 1.05
"""A budget up to 5% above the device's memory is its nominal size ("24GiB" for a 24 GB card,
which PyTorch sees as 23.64 GiB): planned for all the device has, with a note."""


def budget_bytes(budget: Any, spec: DeviceSpec) -> int:
    limit = parse_bytes(budget, of=spec.memory_bytes, what="budget")
    if limit > spec.memory_bytes * _NOMINAL_SLACK:
        raise InvalidInputError(
            f"budget {format_bytes(limit)} is more than {spec.name} has "
            f"({format_bytes(spec.memory_bytes)}); give a smaller budget or another --device"
        )
    return min(limit, spec.memory_bytes)


def budget_note(budget: Any, spec: DeviceSpec) -> str | None:
    limit = parse_bytes(budget, of=spec.memory_bytes, what="budget")
    if limit <= spec.memory_bytes:
        return None
    return (
        f"budget {format_bytes(limit)} is more than {spec.name} has; planned for all of its "
        f"{format_bytes(spec.memory_bytes)}"
    )
