"""One applier per technique type, and applying a plan's techniques all-or-nothing.

An applier is ``fn(model, technique, context) -> undo`` registered for a technique's type::

    @register_applier(Checkpoint)
    def apply_checkpoint(model, technique, context):
        ...                      # validate everything first, then change the model
        return undo              # a zero-argument callable that restores it exactly

Appliers change the model in place and may write to the ``ApplyContext``; their undo reverts
both. ``apply_techniques`` runs them in order; if one fails, the ones already applied are
undone, so the model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from memfit.apply.context import ApplyContext
from memfit.apply.undo import UndoFn, record, run_in_reverse
from memfit.errors import InvalidInputError, MemfitError, UnsupportedModelError

__all__ = ["Applier", "register_applier", "apply_techniques", "known_techniques"]

Applier = Callable[[nn.Module, Any, ApplyContext], UndoFn]
_A = TypeVar("_A", bound=Applier)

_APPLIERS: dict[type, Applier] = {}


def register_applier(technique_type: type) -> Callable[[_A], _A]:
    """Decorator: make ``fn`` the applier of ``technique_type`` (a later one replaces it).

    Args:
        technique_type: the technique dataclass, e.g. ``memfit.plan.Checkpoint``.
    """

    def decorator(fn: _A) -> _A:
        _APPLIERS[technique_type] = fn
        return fn

    return decorator


def known_techniques() -> tuple[type, ...]:
    """The technique types that have an applier."""
    _load_builtin_appliers()
    return tuple(_APPLIERS)


def apply_techniques(model: nn.Module, techniques: Iterable[Any], *, context: ApplyContext) -> None:
    """Apply each technique to ``model`` in order, all or nothing.

    Every change is recorded in ``memfit.apply.undo`` under ``model``; ``plan.undo(model)``
    reverts them.

    Args:
        model: the model, changed in place.
        techniques: technique dataclasses (``plan.techniques``).
        context: receives how the step must call the model and compute the loss.

    Raises:
        InvalidInputError: a technique has no applier (the message lists those that do).
        MemfitError: an applier failed; the message names the technique, the cause and the
            fix. The techniques applied before it are undone, and ``context`` is restored.
    """
    techniques = list(techniques)
    _load_builtin_appliers()
    unknown = [t for t in techniques if type(t) not in _APPLIERS]
    if unknown:
        known = ", ".join(sorted(cls.__name__ for cls in _APPLIERS))
        raise InvalidInputError(
            f"no applier for {', '.join(repr(t) for t in unknown)}; known techniques: {known} "
            f"(register one with memfit.apply.register_applier)"
        )
    done: list[UndoFn] = []
    for technique in techniques:
        try:
            done.append(_APPLIERS[type(technique)](model, technique, context))
        except Exception as error:
            _rollback(done, technique, error)
            if isinstance(error, MemfitError):
                raise _same_kind(error, f"{technique!r}: {error}; nothing was applied") from error
            raise UnsupportedModelError(
                f"{technique!r} failed with {type(error).__name__}: {error}; nothing was "
                f"applied. Drop this technique from the plan, or change the model so that it "
                f"applies (see the applier's Known limitations)"
            ) from error
    for undo_fn in done:
        record(model, undo_fn)


def _rollback(done: list[UndoFn], technique: Any, cause: Exception) -> None:
    try:
        run_in_reverse(done)
    except MemfitError as error:
        raise MemfitError(
            f"{technique!r} failed ({type(cause).__name__}: {cause}), and undoing the "
            f"techniques before it failed too ({error})"
        ) from error


def _same_kind(error: MemfitError, message: str) -> MemfitError:
    try:
        return type(error)(message)
    except TypeError:  # a subclass with another constructor
        return MemfitError(message)


def _load_builtin_appliers() -> None:
    # Importing the modules registers their appliers (kept out of module import time so that
    # registry.py has no import cycle with them).
    from memfit.apply import (  # noqa: F401
        checkpoint,
        chunked_loss,
        fused_activation,
        fused_gated_mlp,
        fused_optimizer,
        lean_autocast,
        step_options,
    )
