"""Reading memfit's JSON files field by field, with a message that names the field on a mistake.

Profiles and plans are read back from files people edit, truncate and mix up; a field of the
wrong type must fail where it is read, naming the field and the file's kind, not later inside
a renderer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from memfit.errors import InvalidInputError

__all__ = ["Fields"]

_MISSING = object()

_KINDS = {
    "bytes": "a whole number of bytes (0 or more)",
    "int": "a whole number",
    "count": "a whole number (0 or more)",
    "seconds": "a number of seconds (0 or more)",
    "number": "a finite number",
    "str": "a string",
    "bool": "true or false",
    "list": "a list",
    "object": "an object ({...})",
}


def _ok(kind: str, value: Any) -> bool:
    if kind in ("bytes", "int", "count"):
        whole = isinstance(value, int) and not isinstance(value, bool)
        return whole and (kind == "int" or value >= 0)
    if kind in ("seconds", "number"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value) and (kind == "number" or value >= 0)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, Mapping)
    raise AssertionError(kind)


class Fields:
    """The fields of one JSON object of a memfit file.

    Args:
        data: the object.
        where: how messages name it, e.g. ``"profile"`` or ``"plan technique 2"``.
        fix: what to do about a bad field (ends every message).
    """

    def __init__(self, data: Any, where: str, fix: str) -> None:
        if not isinstance(data, Mapping):
            raise InvalidInputError(
                f"{where} is {type(data).__name__} {_short(data)}, not an object ({{...}}); {fix}"
            )
        self.data, self.where, self.fix = data, where, fix

    def get(self, key: str, kind: str, default: Any = _MISSING, *, optional: bool = False) -> Any:
        """The field ``key``, checked to be of ``kind`` (see ``_KINDS``), None if ``optional``.

        Raises:
            InvalidInputError: missing without a default, or of the wrong type.
        """
        if key not in self.data:
            if default is _MISSING:
                raise InvalidInputError(f"{self.where} has no field {key!r}; {self.fix}")
            return default
        value = self.data[key]
        if (value is None and optional) or _ok(kind, value):
            return value
        allowed = _KINDS[kind] + (" or null" if optional else "")
        raise InvalidInputError(
            f"{self.where} field {key!r} is {_short(value)} ({type(value).__name__}); it must "
            f"be {allowed}; {self.fix}"
        )

    def items(self, key: str, kind: str) -> list[Any]:
        """A list field whose every item is of ``kind`` (an empty list if missing)."""
        values = self.get(key, "list", [])
        for i, value in enumerate(values):
            if not _ok(kind, value):
                raise InvalidInputError(
                    f"{self.where} field {key!r} item {i} is {_short(value)} "
                    f"({type(value).__name__}); it must be {_KINDS[kind]}; {self.fix}"
                )
        return values

    def unknown(self, known: set[str]) -> None:
        """Raise for keys the object should not have (a misspelt field is not ignored)."""
        extra = sorted(set(self.data) - known)
        if extra:
            raise InvalidInputError(
                f"{self.where} has unknown field(s) {extra}; known: {', '.join(sorted(known))}; "
                f"{self.fix}"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
