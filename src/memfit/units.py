"""Byte quantities: parsing ("24GiB", "80GB", "0.9") and IEC formatting.

Decimal units (kB, MB, GB, TB) are powers of 1000 and binary units (KiB, MiB, GiB, TiB) powers of
1024, as in IEC 80000-13. A bare number below or equal to 1 is a fraction of a reference size
(typically a device's memory). Larger quantities need a unit ("16GiB"): a bare "16" is refused
rather than read as 16 bytes, the mistake it almost always is. A Python ``int`` is a byte count.
"""

from __future__ import annotations

import math
import re

from memfit.errors import InvalidInputError

__all__ = ["KiB", "MiB", "GiB", "TiB", "parse_bytes", "parse_budget", "format_bytes"]

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": TiB,
}
_PATTERN = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, *, of: int | None = None, what: str = "size") -> int:
    """Parse a byte quantity.

    Args:
        text: "24GiB", "80 GB", "512MiB" ("1e9" is not accepted); a number in (0, 1] (or a
            string of one) is a fraction of ``of``; an ``int`` above 1 is a byte count.
        of: the reference size for fractions (e.g. the device's memory).
        what: the name of the quantity, used in error messages ("budget").

    Returns:
        The size in bytes, rounded down to an integer.

    Raises:
        InvalidInputError: for anything that is not a positive size, and for a bare number
            above 1 that is not an ``int`` (``"16"``, ``1.5``): the message suggests the unit.
    """
    fraction_hint = "or a fraction such as '0.8' of the device's memory"
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InvalidInputError(
            f"{what} {text!r} is not a size; give a number and a unit such as '24GiB' or "
            f"'80GB', {fraction_hint}"
        )
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
        number = f"{value:g}"
    else:
        match = _PATTERN.match(text)
        if not match:
            raise InvalidInputError(
                f"{what} {text!r} is not a size; give a number and a unit such as '24GiB', "
                f"'80GB' or '512MiB', {fraction_hint}"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
        number = match.group(1)
    if not math.isfinite(value):
        raise InvalidInputError(
            f"{what} {text!r} is not a finite number; give a size such as '24GiB', {fraction_hint}"
        )
    if unit and unit not in _UNITS:
        allowed = ", ".join(sorted({"B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}))
        raise InvalidInputError(
            f"{what} {text!r} has unknown unit {unit!r}; allowed: {allowed} (e.g. '24GiB')"
        )
    if value <= 0:
        raise InvalidInputError(f"{what} {text!r} must be positive, e.g. '24GiB'")
    if not unit and value <= 1:
        if of is None:
            raise InvalidInputError(
                f"{what} {text!r} is a fraction but there is no reference size; give bytes "
                f"with a unit, e.g. '24GiB'"
            )
        return int(value * of)
    if not unit and not isinstance(text, int):
        raise InvalidInputError(
            f"{what} {text!r} has no unit; give '{number}GiB' (or '{number}GB'), {fraction_hint}"
        )
    return int(value * _UNITS.get(unit, 1))


def parse_budget(text: str | int | float, *, of: int | None, device: str = "the device") -> int:
    """A memory budget: ``parse_bytes`` of it, at least 1 MiB and at most ``of`` (when given).

    Raises:
        InvalidInputError: as ``parse_bytes``; a budget under 1 MiB (``budget=16`` is 16 bytes:
            the message suggests '16GiB'); one larger than the device.
    """
    limit = parse_bytes(text, of=of, what="budget")
    if limit < MiB:
        example = _meant(text, of)
        raise InvalidInputError(
            f"budget {text!r} is {format_bytes(limit)}, less than any training step needs; "
            f"give a size with its unit, e.g. '{example}', or a fraction such as '0.8' of "
            f"{device}'s memory"
        )
    if of is not None and limit > of:
        raise InvalidInputError(
            f"budget {text!r} ({format_bytes(limit)}) is more than {device} has "
            f"({format_bytes(of)}); give a smaller budget or another --device"
        )
    return limit


def _meant(text: str | int | float, of: int | None) -> str:
    """The budget a too-small one most likely meant: its number in GiB (``16`` and ``'16B'``
    give ``'16GiB'``), where that fits ``of``; else 16 GiB, or all of a smaller ``of``."""
    match = re.match(r"\s*(\d+(?:\.\d+)?)", str(text))
    if match and (of is None or float(match.group(1)) * GiB <= of):
        return f"{match.group(1)}GiB"
    return "16GiB" if of is None or of >= 16 * GiB else f"{max(1, of // GiB)}GiB"


def format_bytes(num_bytes: int | float, *, precision: int = 2) -> str:
    """Format bytes in IEC units: ``format_bytes(3 * GiB // 2) == '1.50 GiB'``."""
    sign = "-" if num_bytes < 0 else ""
    size = abs(float(num_bytes))
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{sign}{size / scale:.{precision}f} {unit}"
    return f"{sign}{int(size)} B"
