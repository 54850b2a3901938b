"""The techniques of a plan, as the step that runs them needs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import apply_techniques
from memfit.step.undo import undo_all
from memfit.techniques import (
    TABLE,
    ExpandableSegments,
    FusedOptimizer,
    LeanAutocast,
    MicroBatch,
    MixedPrecision,
    PlanLike,
    PureBF16,
    Sharding,
    info,
    model_fingerprint,
    technique_label,
)

__all__ = ["InForce", "techniques_in_force", "check_fingerprint"]


@dataclass(frozen=True)
class InForce:
    """Techniques split by who carries them out: the model (appliers) or the step."""

    techniques: tuple[Any, ...] = ()
    fingerprint: str = ""

    @property
    def precision(self) -> str | None:
        """The plan's precision: ``"bf16"`` with ``PureBF16``, else its MixedPrecision's."""
        if any(isinstance(t, PureBF16) for t in self.techniques):
            return "bf16"
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
    def expandable_segments(self) -> bool:
        return any(isinstance(t, ExpandableSegments) for t in self.techniques)

    @property
    def fused_optimizer(self) -> bool:
        return any(isinstance(t, FusedOptimizer) for t in self.techniques)

    @property
    def sharding(self) -> Sharding | None:
        found = [t for t in self.techniques if isinstance(t, Sharding)]
        return found[-1] if found else None

    @property
    def in_order(self) -> tuple[Any, ...]:
        """The techniques in the order they are applied: sharding last, once the others have
        changed the modules it wraps (``fully_shard`` replaces the parameters)."""
        return tuple(sorted(self.techniques, key=lambda t: isinstance(t, Sharding)))

    @property
    def label(self) -> str:
        return " + ".join(technique_label(t) for t in self.techniques)

    @contextlib.contextmanager
    def applied_to(
        self,
        module: nn.Module,
        fake_mode: Any = None,
        precision: str | None = None,
        loss_fn: Any = None,
    ) -> Iterator[ApplyContext]:
        """Apply the techniques to ``module`` (a fake model, for tracing); undo them on exit.

        Every technique's applier runs, as ``memfit.apply`` runs them: the ones that change
        the model under ``fake_mode``; the rest only fill the context, which starts with the
        user's ``loss_fn`` (a technique that computes the loss must keep it). ``precision`` is
        the step's (``ApplyContext.step_precision``).

        Raises:
            InvalidInputError: when the plan was made for another model, or has a technique
                the tracer does not model.
        """
        check_fingerprint(self.fingerprint, module)
        unknown = [t for t in self.techniques if info(t) is None]
        if unknown:  # the tracer models the table's techniques only: refuse the others
            raise InvalidInputError(
                f"cannot estimate {', '.join(repr(t) for t in unknown)}: not a technique memfit "
                f"models; known: {', '.join(row.type.__name__ for row in TABLE)}"
            )
        context = ApplyContext(step_precision=precision, loss_fn=loss_fn)
        if not self.techniques:
            yield context
            return
        with fake_mode if fake_mode is not None else contextlib.nullcontext():
            apply_techniques(module, self.in_order, context=context)
        try:
            yield context
        finally:
            undo_all(module)


def check_fingerprint(fingerprint: str, model: nn.Module) -> None:
    """Raise when a plan made for the model ``fingerprint`` names is given another model.

    Raises:
        InvalidInputError: the parameters' names and shapes differ.
    """
    if fingerprint and fingerprint != model_fingerprint(model):
        raise InvalidInputError(
            "this plan was made for another model (its parameters' names and shapes differ); "
            "make a plan for this model with memfit.plan(model, batch, ...)"
        )


def techniques_in_force(plan: PlanLike | Sequence[Any] | None) -> InForce:
    """Accept a Plan, a sequence of techniques, or None (nothing)."""
    if plan is None:
        return InForce()
    if isinstance(plan, (list, tuple)):
        return InForce(tuple(plan))
    if hasattr(plan, "techniques") and hasattr(plan, "model_fingerprint"):
        return InForce(tuple(plan.techniques), plan.model_fingerprint)
    raise InvalidInputError(
        f"plan {plan!r} is not a memfit.Plan or a sequence of techniques such as "
        f"[Checkpoint(modules=('layers.*',)), MicroBatch(n=2)]"
    )
