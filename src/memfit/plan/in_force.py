"""The techniques of a plan, as the step that runs them needs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from memfit.errors import InvalidInputError
from memfit.plan.plan import TECHNIQUE_TYPES, Plan, model_fingerprint, technique_label
from memfit.plan.techniques import (
    Checkpoint,
    ChunkedLoss,
    FusedActivation,
    FusedGatedMLP,
    FusedOptimizer,
    LeanAutocast,
    MicroBatch,
    MixedPrecision,
)

__all__ = ["InForce", "techniques_in_force"]

_MODEL_CHANGING = (FusedActivation, FusedGatedMLP, Checkpoint, ChunkedLoss)
_KNOWN = tuple(TECHNIQUE_TYPES.values())  # the built-in techniques, all modelled


@dataclass(frozen=True)
class InForce:
    """Techniques split by who carries them out: the model (appliers) or the step."""

    techniques: tuple[Any, ...] = ()
    fingerprint: str = ""

    @property
    def precision(self) -> str | None:
        found = [t.precision for t in self.techniques if isinstance(t, MixedPrecision)]
        return found[-1] if found else None

    @property
    def micro_batches(self) -> int:
        found = [t.n for t in self.techniques if isinstance(t, MicroBatch)]
        return found[-1] if found else 1

    @property
    def lean_autocast(self) -> bool:
        return any(isinstance(t, LeanAutocast) for t in self.techniques)

    @property
    def fused_optimizer(self) -> bool:
        return any(isinstance(t, FusedOptimizer) for t in self.techniques)

    @property
    def label(self) -> str:
        return " + ".join(technique_label(t) for t in self.techniques)

    @contextlib.contextmanager
    def applied_to(self, module: nn.Module, fake_mode: Any = None) -> Iterator[Any]:
        """Apply the model-changing techniques to ``module``; undo them on exit.

        Raises:
            InvalidInputError: when the plan was made for another model, or has a technique
                the tracer does not model.
        """
        from memfit.apply.context import ApplyContext
        from memfit.apply.registry import apply_techniques
        from memfit.apply.undo import undo_all

        if self.fingerprint and self.fingerprint != model_fingerprint(module):
            raise InvalidInputError(
                "this plan was made for another model (its parameters' names and shapes "
                "differ); make a plan for this model with memfit.plan(model, batch, ...)"
            )
        # the tracer models the built-in techniques only: refuse others rather than ignore them
        unknown = [t for t in self.techniques if not isinstance(t, _KNOWN)]
        if unknown:
            raise InvalidInputError(
                f"cannot estimate {', '.join(repr(t) for t in unknown)}: not a technique memfit "
                f"models; known: {', '.join(cls.__name__ for cls in _KNOWN)}"
            )
        context = ApplyContext()
        changing = [t for t in self.techniques if isinstance(t, _MODEL_CHANGING)]
        if not changing:
            yield context
            return
        with fake_mode if fake_mode is not None else contextlib.nullcontext():
            apply_techniques(module, changing, context=context)
        try:
            yield context
        finally:
            undo_all(module)


def techniques_in_force(plan: Plan | Sequence[Any] | None) -> InForce:
    """Accept a Plan, a sequence of techniques, or None (nothing)."""
    if plan is None:
        return InForce()
    if isinstance(plan, Plan):
        return InForce(tuple(plan.techniques), plan.model_fingerprint)
    if isinstance(plan, (list, tuple)):
        return InForce(tuple(plan))
    raise InvalidInputError(
        f"plan {plan!r} is not a memfit.Plan or a sequence of techniques such as "
        f"[Checkpoint(modules=('layers.*',)), MicroBatch(n=2)]"
    )
