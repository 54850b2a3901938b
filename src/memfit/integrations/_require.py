"""Import an optional framework, or say how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

from memfit.errors import MemfitError

__all__ = ["require"]


def require(module: str, *, pip: str, feature: str) -> ModuleType:
    """Import ``module`` or raise MemfitError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MemfitError(
            f"{feature} needs {module!r}, which is not installed ({exc}); install it with "
            f"'pip install {pip}', or wrap your own training step in memfit.OOMGuard"
        ) from None
