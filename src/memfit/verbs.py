"""Packages that are also verbs: ``memfit.plan(...)``, ``memfit.apply(...)``, ``memfit.report``.

The public API calls ``memfit.plan(model, batch, budget=...)`` while ``memfit.plan`` is also a
package (``memfit.plan.Plan``). Python binds ``memfit.plan`` to the package as soon as anything
imports one of its modules, so the name cannot reliably mean a function. Instead the package is
made callable, forwarding to its verb; every other name stays an ordinary attribute.

A package whose verb imports torch names it as ``"module:function"`` and its other public names
in ``exports``: they are imported when first used, so that importing the package (the command
line does, for its help) stays fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["make_callable", "verb_of"]


def make_callable(
    package: str, verb: Callable[..., Any] | str, exports: Mapping[str, str] | None = None
) -> None:
    """Make the module ``package`` (being imported) callable as ``verb``.

    Args:
        package: the package's ``__name__``.
        verb: the function, or ``"module:function"`` imported at the first call.
        exports: public names imported on first use, each to the module that defines it.
    """
    lazy = dict(exports or {})

    def call(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return verb_of(self)(*args, **kwargs)

    def getattr_(self: types.ModuleType, name: str) -> Any:
        if name not in lazy:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(lazy[name]), name)

    module = sys.modules[package]
    doc = verb.__doc__ if callable(verb) else module.__doc__
    module.__class__ = type(
        "CallablePackage",
        (types.ModuleType,),
        {"__call__": call, "__getattr__": getattr_, "__doc__": doc, "_verb": verb},
    )


def verb_of(package: types.ModuleType) -> Callable[..., Any]:
    """The function that calling ``package`` runs (imported now if it was named by string)."""
    verb = type(package)._verb  # type: ignore[attr-defined]
    if isinstance(verb, str):
        module, _, name = verb.partition(":")
        verb = getattr(importlib.import_module(module), name)
    return verb
