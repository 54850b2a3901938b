"""The planner's settings: the budget (checked against the device), what it may choose, how
hard it looks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memfit.devices import DeviceSpec
from memfit.errors import InvalidInputError
from memfit.plan.sharded import check_gpus
from memfit.units import format_bytes, parse_budget, parse_bytes

__all__ = [
    "PlanSettings",
    "CHUNK_BYTES",
    "COMPILE_NOTE",
    "COMPILE_SAFE",
    "budget_bytes",
    "budget_note",
]


# What keeps its memory under torch.compile: measured on an H200, LLaMA-1B's plans with lean
# autocast and fused gated MLPs took 23.45 GiB compiled for a 21.77 GiB budget, the same
# budgets planned without them 19.89 GiB (eager 21.02); selective checkpointing's dispatch mode
# does not compose with compile (pytorch/pytorch#161889)
COMPILE_SAFE = ("checkpoint", "micro_batch", "chunked_loss", "fused_activation", "fused_optimizer")
COMPILE_NOTE = (
    "planned for torch.compile: full checkpointing, micro-batching, the chunked loss and "
    "fusions only (lean blocks and selective checkpointing do not keep their memory when "
    "compiled); the predicted time is the eager step's, a compiled one runs faster"
)

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
        margin: fraction of the budget kept free for prediction error; None: ``MARGIN``,
            and ``CONVOLUTION_MARGIN`` for plans that recompute convolutions (``target_for``).
        max_traces: candidates traced in full before giving up on the screening order.
        compile: plan for a compiled model (``COMPILE_SAFE`` techniques, full checkpointing).
        gpus: GPUs of the job; more than 1: the plan shards with FSDP2 (``plan.sharded``).
    """

    budget: int
    allow: tuple[str, ...]
    blocks: Sequence[str] | None = None
    head: str = "lm_head"
    chunks: int = 4
    max_micro_batches: int = 8
    margin: float | None = None
    max_traces: int = 6
    compile: bool = False
    gpus: int = 1

    def __post_init__(self) -> None:
        """Check the search's settings before any tracing."""
        check_gpus(self.gpus)
        for name, low in (("chunks", 2), ("max_micro_batches", 1), ("max_traces", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(
                    f"{name}={value!r} must be a whole number of at least {low}, e.g. "
                    f"{name}={max(low, 4)}"
                )
        if self.margin is not None and (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, (int, float))
            or not (0 <= self.margin < 0.5)
        ):
            raise InvalidInputError(
                f"margin={self.margin!r} must be a fraction of the budget in [0, 0.5), e.g. "
                f"margin=0.02 (2% kept free for prediction error), or None (memfit's choice)"
            )
        if not isinstance(self.head, str) or not self.head:
            raise InvalidInputError(
                f"head={self.head!r} must be the name of the LM head module, e.g. 'lm_head'"
            )
        if self.blocks is not None and (
            isinstance(self.blocks, str)
            or not isinstance(self.blocks, (list, tuple))
            or not all(isinstance(b, str) and b for b in self.blocks)
        ):
            raise InvalidInputError(
                f"blocks={self.blocks!r} must be a list of module patterns, e.g. "
                f"blocks=['layers.*'] (--blocks layers.0,layers.1 on the command line)"
            )

    @property
    def target(self) -> int:
        """The predicted reserved peak a plan may reach."""
        return int(self.budget * (1 - (MARGIN if self.margin is None else self.margin)))

    def target_for(self, recomputes_convolutions: bool) -> int:
        """The predicted reserved peak a plan may reach, knowing whether it recomputes
        convolutions (a class of plan measured above its prediction: ``known_misses``)."""
        if self.margin is None and recomputes_convolutions:
            return int(self.budget * (1 - CONVOLUTION_MARGIN))
        return self.target


MARGIN = 0.02
"""The budget's fraction a plan keeps free for prediction error (the measured frontier plans'
reserved peaks came out between 1.4% above and 0.9% below their predictions:
bench/results/frontier_h200.json)."""

CONVOLUTION_MARGIN = 0.05
"""The same for plans that recompute convolutions: ResNet-50's measured 5.2-10.6% above their
predictions before its weight gradients' cuDNN workspaces were modelled, 1.4% and 3.4% after
(``memfit.plan.known_misses``)."""

_NOMINAL_SLACK = 1.05
"""A budget up to 5% above the device's memory is its nominal size ("24GiB" for a 24 GB card,
which PyTorch sees as 23.64 GiB): planned for all the device has, with a note."""


def budget_bytes(budget: Any, spec: DeviceSpec) -> int:
    """The budget in bytes (``memfit.units.parse_budget``); one up to 5% above the device's
    memory is planned for all of it.

    Raises:
        InvalidInputError: as ``parse_budget``, for budgets beyond that slack.
    """
    try:
        return parse_budget(budget, of=spec.memory_bytes, device=spec.name)
    except InvalidInputError:
        if _nominal(budget, spec):
            return spec.memory_bytes
        raise


def _nominal(budget: Any, spec: DeviceSpec) -> bool:
    try:
        limit = parse_bytes(budget, of=spec.memory_bytes, what="budget")
    except InvalidInputError:
        return False
    return spec.memory_bytes < limit <= spec.memory_bytes * _NOMINAL_SLACK


def budget_note(budget: Any, spec: DeviceSpec) -> str | None:
    """The plan's note when the budget was more than the device has (within the slack)."""
    if not _nominal(budget, spec):
        return None
    limit = parse_bytes(budget, of=spec.memory_bytes, what="budget")
    return (
        f"budget {format_bytes(limit)} is more than {spec.name} has; planned for all of its "
        f"{format_bytes(spec.memory_bytes)}"
    )
