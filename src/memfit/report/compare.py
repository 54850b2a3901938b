"""Two runs side by side: what differs at the peak, category by category and module by module.

Inputs are MemoryProfile JSON files (``memfit estimate --format json``, ``MemoryProfile.to_json``)
or plan JSON files that carry their predicted profile under a ``"profile"`` key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memfit.errors import InvalidInputError
from memfit.profile import Category, MemoryProfile, ModuleMemory
from memfit.report.tables import format_table
from memfit.units import format_bytes

__all__ = [
    "ModuleDelta",
    "ProfileDiff",
    "diff_profiles",
    "diff_text",
    "load_comparable",
    "version_differences",
]


@dataclass(frozen=True, slots=True)
class ModuleDelta:
    """The memory a module owns or causes (params + grads + own activations) in two runs."""

    fqn: str
    before: int
    after: int

    @property
    def change(self) -> int:
        return self.after - self.before


@dataclass(frozen=True)
class ProfileDiff:
    """Run A against run B."""

    names: tuple[str, str]
    a: MemoryProfile
    b: MemoryProfile
    categories: tuple[tuple[Category, int, int], ...]
    modules: tuple[ModuleDelta, ...]  # largest change first

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.names[0],
            "b": self.names[1],
            "peak_reserved_bytes": [self.a.peak_reserved, self.b.peak_reserved],
            "peak_allocated_bytes": [self.a.peak_allocated, self.b.peak_allocated],
            "categories": {c.value: [x, y] for c, x, y in self.categories},
            "modules": [
                {"module": m.fqn, "a_bytes": m.before, "b_bytes": m.after, "change_bytes": m.change}
                for m in self.modules
            ],
        }


def load_comparable(path: str | Path) -> MemoryProfile:
    """Read a profile, or the profile inside a plan, from a JSON file."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(
            f"{str(path)!r} does not exist; write one with `memfit estimate MODEL --format json "
            f"> {file.name}`"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(
            f"{str(path)!r} is not JSON ({error}); compare takes profiles or plans written with "
            f"--format json"
        ) from None
    if isinstance(data, Mapping) and "techniques" in data:  # a plan: read (and check) it whole
        from memfit.plan.plan import Plan  # imports torch: only when a plan is read

        plan = Plan.from_dict(data)
        if plan.profile is None:
            raise InvalidInputError(
                f"{str(path)!r} is a memfit plan without a predicted profile (a hand-made "
                f"plan); give a plan written by `memfit plan ... --out plan.json`, or predict "
                f"this one first: memfit.estimate(model, batch, plan=...)"
            )
        return plan.profile
    if isinstance(data, Mapping) and isinstance(data.get("profile"), Mapping):
        data = data["profile"]  # `memfit estimate/report --format json` output
    if not isinstance(data, Mapping):
        raise InvalidInputError(
            f"{str(path)!r} holds a JSON {type(data).__name__}, not a memfit profile or plan; "
            f"write one with `memfit estimate MODEL --format json > profile.json` or `memfit "
            f"plan MODEL --budget 16GiB --out plan.json`"
        )
    return MemoryProfile.from_dict(data)


def _owned(m: ModuleMemory) -> int:
    return m.param_bytes + m.grad_bytes + m.self_activation_bytes


def diff_profiles(a: MemoryProfile, b: MemoryProfile, names: tuple[str, str]) -> ProfileDiff:
    """Compare two profiles category by category and module by module."""
    categories = tuple(
        (c, a.by_category.get(c, 0), b.by_category.get(c, 0))
        for c in Category
        if a.by_category.get(c, 0) or b.by_category.get(c, 0)
    )
    before = {m.fqn: _owned(m) for m in a.modules}
    after = {m.fqn: _owned(m) for m in b.modules}
    order = list(before) + [k for k in after if k not in before]
    modules = [ModuleDelta(k, before.get(k, 0), after.get(k, 0)) for k in order]
    modules = [m for m in modules if m.before or m.after]
    modules.sort(key=lambda m: -abs(m.change))
    return ProfileDiff(names, a, b, categories, tuple(modules))


def _delta(x: int, y: int) -> tuple[str, str]:
    change = y - x
    sign = "+" if change > 0 else ""
    pct = f"{100 * change / x:+.1f}%" if x else ("new" if y else "")
    return f"{sign}{format_bytes(change)}" if change else "0", pct


def _software(profile: MemoryProfile) -> dict[str, str]:
    """What ran (or was modelled) for the step: the target's torch and cuDNN stand in for
    this machine's in an estimate, whose model libraries ran here."""
    found = {k: v for k, v in profile.versions.items() if k not in ("memfit", "python")}
    found["torch"] = profile.target_stack.get("torch", found.get("torch", ""))
    found["cudnn"] = profile.target_stack.get("cudnn", found.get("cudnn", ""))
    return {k: v for k, v in found.items() if v}


def _release(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def version_differences(a: MemoryProfile, b: MemoryProfile) -> list[str]:
    """A line per library whose release differs between A and B (torch, cuDNN, transformers,
    ...): a change there can change memory by itself (transformers 5.25 against 5.17: T5-small
    in fp32 29% apart on an H200)."""
    sa, sb = _software(a), _software(b)
    return [
        f"versions differ: {name} {sa[name]} (A) against {sb[name]} (B): part of the difference "
        f"can be that"
        for name in sa
        if name in sb and _release(sa[name]) != _release(sb[name])
    ]


def diff_text(diff: ProfileDiff, *, top: int = 15) -> str:
    """The comparison as aligned tables: peaks first, then categories, then what grew most."""
    a, b = diff.a, diff.b
    name_a, name_b = diff.names
    rows = [
        (
            "peak reserved",
            format_bytes(a.peak_reserved),
            format_bytes(b.peak_reserved),
            *_delta(a.peak_reserved, b.peak_reserved),
        ),
        (
            "peak allocated",
            format_bytes(a.peak_allocated),
            format_bytes(b.peak_allocated),
            *_delta(a.peak_allocated, b.peak_allocated),
        ),
    ]
    rows += [
        (c.value, format_bytes(x), format_bytes(y), *_delta(x, y)) for c, x, y in diff.categories
    ]
    headers = ("at the peak", f"A: {name_a}", f"B: {name_b}", "B - A", "change")
    out = [
        f"A: {name_a}  ({a.model} on {a.device})",
        f"B: {name_b}  ({b.model} on {b.device})",
        *version_differences(a, b),
        "",
        format_table(headers, rows),
    ]
    changed = [m for m in diff.modules if m.change][:top]
    if changed:
        mod_rows = [
            (
                m.fqn or "(model)",
                format_bytes(m.before),
                format_bytes(m.after),
                *_delta(m.before, m.after),
            )
            for m in changed
        ]
        out += [
            "",
            "modules that changed most (params + grads + own activations):",
            format_table(("module", "A", "B", "B - A", "change"), mod_rows),
        ]
    return "\n".join(out)
