"""Module name patterns: shell wildcards applied per dotted segment.

``"layers.*"`` matches ``layers.0`` and ``layers.11`` but not ``layers.0.attn``: a wildcard never
crosses a dot, as in ``Checkpoint``'s documentation. ``"**"`` stands for any number of segments
(``"**.attn"`` is every module named ``attn``). Within a segment, ``*``, ``?`` and ``[...]``
behave as in ``fnmatch`` (case-sensitive).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from torch import nn

from memfit.errors import InvalidInputError

__all__ = ["name_matches", "match_modules"]


def name_matches(name: str, pattern: str) -> bool:
    """Whether the dotted module ``name`` matches ``pattern`` (see the module docstring)."""
    return _match(name.split("."), pattern.split("."))


def _match(parts: list[str], segments: list[str]) -> bool:
    if not segments:
        return not parts
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match(parts[1:], rest)


def match_modules(
    model: nn.Module, patterns: Sequence[str], *, what: str, hint: Callable[[], str]
) -> list[tuple[str, nn.Module]]:
    """The modules (root excluded) whose names match any of ``patterns``, in model order.

    Args:
        model: the model.
        patterns: name patterns; each must match at least one module.
        what: the technique's name, for messages.
        hint: returns a suggestion of valid names, used only in the error.

    Raises:
        InvalidInputError: a pattern matches nothing; the message lists close names.
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    names = [name for name, _ in named]
    for pattern in patterns:
        if not any(name_matches(name, pattern) for name in names):
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            raise InvalidInputError(
                f"{what} pattern {pattern!r} matches no module of this "
                f"{type(model).__name__}; close names: {', '.join(close) or 'none'}. Patterns are "
                f"module names from model.named_modules() with per-segment wildcards "
                f"('layers.*'); try {hint()}"
            )
    return [(n, m) for n, m in named if any(name_matches(n, p) for p in patterns)]
