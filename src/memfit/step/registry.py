"""One applier per technique type, and applying a plan's techniques all-or-nothing.

The technique table (``memfit.techniques.TABLE``) names the module of ``memfit.apply`` that
holds each technique's applier; the registry imports it the first time a technique of that
type is applied. So the tracer, which applies plans to fake models, and ``memfit.apply``, which
applies them to real ones, run the same appliers, and the tracer needs no import of
``memfit.apply``.

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

import importlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import nn

from memfit.errors import InvalidInputError, MemfitError, UnsupportedModelError
from memfit.step.context import ApplyContext
from memfit.step.undo import UndoFn, record, run_in_reverse
from memfit.technique_rules import check_combination
from memfit.techniques import TABLE, info

__all__ = ["Applier", "register_applier", "apply_techniques", "known_techniques"]

Applier = Callable[[nn.Module, Any, ApplyContext], UndoFn]
_A = TypeVar("_A", bound=Applier)

OptimizerCheck = Callable[[torch.optim.Optimizer], None]
"""Raises a MemfitError when a technique cannot change this optimizer; changes nothing."""

_APPLIERS: dict[type, Applier] = {}
_OPTIMIZER_CHECKS: dict[type, OptimizerCheck] = {}


def register_applier(
    technique_type: type, *, check_optimizer: OptimizerCheck | None = None
) -> Callable[[_A], _A]:
    """Decorator: make ``fn`` the applier of ``technique_type`` (a later one replaces it).

    Args:
        technique_type: the technique dataclass, e.g. ``memfit.Checkpoint``.
        check_optimizer: for techniques that change the optimizer: run on the user's
            optimizer before any technique changes anything.
    """

    def decorator(fn: _A) -> _A:
        _APPLIERS[technique_type] = fn
        if check_optimizer is not None:
            _OPTIMIZER_CHECKS[technique_type] = check_optimizer
        return fn

    return decorator


def known_techniques() -> tuple[type, ...]:
    """The technique types that have an applier: the table's, and any registered since."""
    for row in TABLE:
        _load_applier(row.type)
    return tuple(_APPLIERS)


def apply_techniques(
    model: nn.Module,
    techniques: Iterable[Any],
    *,
    context: ApplyContext,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Apply each technique to ``model`` (and ``optimizer``) in order, all or nothing.

    Every change is recorded in ``memfit.step.undo`` under ``model``; ``plan.undo(model)``
    reverts them, the optimizer's included.

    Args:
        model: the model, changed in place.
        techniques: technique dataclasses (``plan.techniques``).
        context: receives how the step must call the model and compute the loss.
        optimizer: the model's optimizer, for the techniques that change it; checked before
            anything changes, changed last. None: the caller runs
            ``context.change_optimizer`` once it has one (the tracer).

    Raises:
        InvalidInputError: a technique has no applier (the message lists those that do), or
            two techniques exclude each other (the table's ``excludes``).
        MemfitError: an applier failed; the message names the technique, the cause and the
            fix. The techniques applied before it are undone, and ``context`` is restored.
    """
    techniques = list(techniques)
    check_combination(techniques)
    for technique in techniques:
        _load_applier(type(technique))
    unknown = [t for t in techniques if type(t) not in _APPLIERS]
    if unknown:
        known = ", ".join(sorted(cls.__name__ for cls in _APPLIERS))
        raise InvalidInputError(
            f"no applier for {', '.join(repr(t) for t in unknown)}; known techniques: {known} "
            f"(register one with memfit.apply.register_applier)"
        )
    if optimizer is not None:
        for technique in techniques:
            check = _OPTIMIZER_CHECKS.get(type(technique))
            if check is not None:
                try:
                    check(optimizer)
                except MemfitError as error:
                    message = f"{technique!r}: {error}; nothing was applied"
                    raise _same_kind(error, message) from error
    done: list[UndoFn] = []
    steps: list[Any] = techniques + [_OptimizerChanges()]
    for technique in steps:
        try:
            if not isinstance(technique, _OptimizerChanges):
                done.append(_APPLIERS[type(technique)](model, technique, context))
            elif optimizer is not None and context.optimizer_changes:
                # only real changes are recorded: an empty plan leaves nothing to undo
                done.append(context.change_optimizer(optimizer))
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


class _OptimizerChanges:
    """The last step of applying: the context's changes to the optimizer."""

    def __repr__(self) -> str:
        return "the optimizer's changes"


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


def _load_applier(technique_type: type) -> None:
    """Import the module the table names for ``technique_type``; it registers the applier."""
    row = info(technique_type)
    if technique_type not in _APPLIERS and row is not None:
        importlib.import_module(row.applier)
