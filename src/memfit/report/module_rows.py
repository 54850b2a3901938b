"""Modules as a reader wants them listed: repeated blocks folded into one row with a count.

A 12-layer model has twelve ``layers.N.mlp.fc1`` that keep the same bytes; listing them one by
one fills a table with copies. Modules whose names differ only in their numbered parts (the
index in a ``ModuleList``) and whose type and figures are equal become one row,
``layers.0-11.mlp.fc1`` with a count of 12; a block that differs (checkpointed, say) keeps its
own row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from memfit.profile import ModuleMemory

__all__ = ["ModuleRow", "fold_repeated"]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


@dataclass(frozen=True, slots=True)
class ModuleRow:
    """One row: a module, or ``count`` modules with equal figures (each row's figures are one
    module's)."""

    label: str
    module_type: str
    count: int
    self_activation_bytes: int
    activation_bytes: int


def _indices(numbers: list[int]) -> str:
    numbers = sorted(set(numbers))
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}-{numbers[-1]}"
    return ",".join(map(str, numbers))


def _fill(pattern: str, parts: list[str]) -> str:
    pieces = pattern.split("#")
    return "".join(p + (parts[i] if i < len(parts) else "") for i, p in enumerate(pieces))


def fold_repeated(modules: Iterable[ModuleMemory], *, own: bool = True) -> list[ModuleRow]:
    """Rows of ``modules``, largest first (by own activations, else with children), repeated
    blocks folded (module docstring)."""
    groups: dict[tuple[str, str, int, int], list[tuple[ModuleMemory, list[int]]]] = {}
    for m in modules:
        found = [int(x) for x in _INDEX.findall(m.fqn)]
        pattern = _INDEX.sub("#", m.fqn) if found else m.fqn
        key = (pattern, m.module_type, m.self_activation_bytes, m.activation_bytes)
        groups.setdefault(key, []).append((m, found))
    rows = []
    for (pattern, module_type, self_bytes, total), members in groups.items():
        if len(members) == 1:
            label = members[0][0].fqn
        else:
            columns = zip(*(found for _, found in members), strict=True)
            label = _fill(pattern, [_indices(list(col)) for col in columns])
        rows.append(ModuleRow(label, module_type, len(members), self_bytes, total))
    rows.sort(key=lambda r: (-(r.self_activation_bytes if own else r.activation_bytes), r.label))
    return rows
