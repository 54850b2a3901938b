"""Packages that are also verbs: ``memfit.plan(...)``, ``memfit.apply(...)``, ``memfit.report``.

The public API calls ``memfit.plan(model, batch, budget=...)`` while ``memfit.plan`` is also a
package (``memfit.plan.Plan``). Python binds ``memfit.plan`` to the package as soon as anything
imports one of its modules, so the name cannot reliably mean a function. Instead the package is
made callable, forwarding to its verb; every other name stays an ordinary attribute.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


def make_callable(package: str, verb: Callable[..., Any]) -> None:
    """Make the module ``package`` (already imported) callable as ``verb``."""
    module = sys.modules[package]
    module.__class__ = type(
        "CallablePackage",
        (types.ModuleType,),
        {"__call__": staticmethod(verb), "__doc__": verb.__doc__},
    )
