"""``OOMGuard(step_fn)`` without ``optimizer=``: find the optimizer and model ``step_fn`` uses.

A training step function names its optimizer and model: as globals of its module, as variables
of an enclosing function, as attributes of the object a method is bound to, or as arguments of
a ``functools.partial``. The guard looks there (and one attribute deeper, for a ``trainer``
object holding them), never anywhere else: it takes the one optimizer it finds, and the model
among the modules it finds that holds the optimizer's parameters.

Known limitations:
    Objects reached only through containers (a list of optimizers) or through calls
    (``get_optimizer()``) are not found; the error then says to pass ``optimizer=``.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError

__all__ = ["find_optimizer_and_model"]


def _referenced(fn: Any) -> dict[str, Any]:
    """Names ``fn`` can see that its code refers to (globals, closure, bound object, partial)."""
    found: dict[str, Any] = {}
    if isinstance(fn, functools.partial):
        found.update({f"argument {i}": a for i, a in enumerate(fn.args)})
        found.update(fn.keywords)
        found.update(_referenced(fn.func))
        return found
    if inspect.ismethod(fn):
        found.update({f"self.{k}": v for k, v in vars(fn.__self__).items()})
        found.update(_referenced(fn.__func__))
        return found
    if inspect.isfunction(fn):
        try:
            closure = inspect.getclosurevars(fn)
        except (TypeError, ValueError):
            return found
        found.update(closure.globals)
        found.update(closure.nonlocals)
        return found
    if callable(fn) and hasattr(fn, "__dict__"):  # an object with __call__
        found.update({f"self.{k}": v for k, v in vars(fn).items()})
        found.update(_referenced(type(fn).__call__))
    return found


def _one_level_deeper(names: dict[str, Any]) -> dict[str, Any]:
    deeper = dict(names)
    for name, value in names.items():
        if isinstance(value, (nn.Module, torch.optim.Optimizer, types.ModuleType, type)):
            continue
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            deeper.update({f"{name}.{k}": v for k, v in attributes.items()})
    return deeper


def _unique(pairs: Iterable[tuple[str, Any]]) -> dict[int, tuple[str, Any]]:
    seen: dict[int, tuple[str, Any]] = {}
    for name, value in pairs:
        seen.setdefault(id(value), (name, value))
    return seen


def find_optimizer_and_model(
    fn: Callable[..., Any],
) -> tuple[torch.optim.Optimizer, nn.Module | None]:
    """The optimizer ``fn`` steps and the model it trains, from the names it refers to.

    Raises:
        InvalidInputError: no optimizer, or several, among them; the message names what was
            found and says to pass ``optimizer=`` (and ``model=``).
    """
    names = _one_level_deeper(_referenced(fn))
    optimizers = _unique((n, v) for n, v in names.items() if isinstance(v, torch.optim.Optimizer))
    what = getattr(fn, "__qualname__", type(fn).__name__)
    if len(optimizers) != 1:
        listed = ", ".join(f"{n} ({type(v).__name__})" for n, v in optimizers.values())
        found = f"it refers to {len(optimizers)}: {listed}" if optimizers else "it refers to none"
        raise InvalidInputError(
            f"OOMGuard({what}) needs the one optimizer the step function steps, and {found}; "
            f"pass it: OOMGuard({what}, optimizer=opt, model=model)"
        )
    optimizer = next(iter(optimizers.values()))[1]
    wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
    modules = _unique((n, v) for n, v in names.items() if isinstance(v, nn.Module))
    best: tuple[int, nn.Module] | None = None
    for _, module in modules.values():
        held = sum(1 for p in module.parameters() if id(p) in wanted)
        if held and (best is None or held > best[0]):
            best = (held, module)
    return optimizer, best[1] if best else None
