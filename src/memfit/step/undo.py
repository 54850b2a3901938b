"""What memfit changed on a model, and how to put it back.

This registry is the one piece of state memfit keeps about your models: a
``weakref.WeakKeyDictionary`` from each model that techniques were applied to, to the stack of
callables that undo them, newest last. It holds the model weakly, so dropping your last reference
to a model frees it (and its entry) as usual. Appliers keep their undo callables free of strong
references to the model itself for that reason: they refer to submodules, or hold weak references.

``undo_all(model)`` runs the stack in reverse order. Appliers restore exactly what they changed:
the same module objects, the same parameters (by identity) and the class's own ``forward``.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

from torch import nn

from memfit.errors import MemfitError

__all__ = ["UndoFn", "record", "undo", "undo_all", "applied", "run_in_reverse"]

UndoFn = Callable[[], None]
"""Puts back what one applier changed; takes no argument and returns nothing."""

_APPLIED: weakref.WeakKeyDictionary[nn.Module, list[UndoFn]] = weakref.WeakKeyDictionary()


def record(model: nn.Module, undo_fn: UndoFn) -> None:
    """Remember that ``undo_fn`` reverts a change made to ``model`` (pushed on its stack).

    Args:
        model: the model the user passed (the key ``undo_all`` is called with).
        undo_fn: a zero-argument callable. It must not hold a strong reference to ``model``
            itself, or the model is never freed.
    """
    _APPLIED.setdefault(model, []).append(undo_fn)


def applied(model: nn.Module) -> bool:
    """Whether memfit has changed ``model`` and not yet undone it."""
    return bool(_APPLIED.get(model))


def undo_all(model: nn.Module) -> None:
    """Revert every change memfit made to ``model``, newest first.

    Calling it on a model memfit has not changed (or has already restored) does nothing and
    warns, since the call then has no effect.

    Raises:
        MemfitError: when an undo step fails; the others still run, and the model may be left
            partly modified (the message names the steps that failed).
    """
    if not isinstance(model, nn.Module):
        raise MemfitError(
            f"undo takes the nn.Module memfit.apply changed, not {model!r} of type "
            f"{type(model).__name__}: memfit.undo(model), or step.undo() on the step apply "
            f"returned"
        )
    stack = _APPLIED.pop(model, None)
    if not stack:
        warnings.warn(
            f"nothing to undo: memfit has not changed this {type(model).__name__} (or it was "
            f"already restored); undo with the same model object that the plan was applied to",
            stacklevel=2,
        )
        return
    run_in_reverse(stack)


def undo(model: nn.Module) -> None:
    """``memfit.undo(model)``: put ``model`` (and its optimizer) back exactly as before
    ``memfit.apply``, whatever was applied: a plan from ``memfit.plan`` or a list of techniques.

    The same as ``step.undo()`` on the step ``memfit.apply`` returned and ``plan.undo(model)``.

    Raises:
        MemfitError: as ``undo_all``.
    """
    undo_all(model)


def run_in_reverse(undos: list[UndoFn]) -> None:
    """Run ``undos`` newest first; all of them run even when some fail.

    Raises:
        MemfitError: naming every step that failed (chained to the first failure).
    """
    failures: list[tuple[UndoFn, Exception]] = []
    for undo_fn in reversed(undos):
        try:
            undo_fn()
        except Exception as error:  # keep undoing the rest, then report every failure
            failures.append((undo_fn, error))
    if failures:
        details = "; ".join(f"{_name(fn)}: {type(e).__name__}: {e}" for fn, e in failures)
        raise MemfitError(
            f"{len(failures)} of {len(undos)} undo steps failed ({details}); the model may be "
            f"partly modified: rebuild it or reload its state"
        ) from failures[0][1]


def _name(fn: UndoFn) -> str:
    target = getattr(fn, "func", fn)  # functools.partial
    return getattr(target, "__qualname__", None) or type(target).__name__
