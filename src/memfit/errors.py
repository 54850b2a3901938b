"""Errors that memfit raises for user mistakes.

Every message names the offending value, what is allowed, and the fix. Internal invariants use
``assert`` instead; they are bugs in memfit, not in the user's code.
"""

from __future__ import annotations

__all__ = [
    "MemfitError",
    "InvalidInputError",
    "UnsupportedModelError",
    "BudgetInfeasibleError",
    "DeviceError",
    "UnsplittableBatchError",
]


class MemfitError(Exception):
    """Base class of every error memfit raises on purpose."""


class InvalidInputError(MemfitError, ValueError):
    """A value given by the user (a size, a spec, a name) is malformed or out of range."""


class UnsupportedModelError(MemfitError):
    """The model (or its builder, batch or loss) cannot be traced as given."""


class BudgetInfeasibleError(MemfitError):
    """No combination of techniques meets the memory budget."""


class DeviceError(MemfitError):
    """A device name is unknown or the local GPU is missing."""


class UnsplittableBatchError(InvalidInputError):
    """A batch (or a part of it) cannot be cut into micro-batches along its first dimension."""
