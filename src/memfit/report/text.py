"""The terminal and JSON faces of a profile: the peak and the verdict first, then tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memfit.profile import Category, MemoryProfile
from memfit.report.module_rows import fold_repeated
from memfit.report.tables import format_table
from memfit.snapshot.fragmentation import Fragmentation
from memfit.units import format_bytes

__all__ = [
    "Verdict",
    "verdict",
    "profile_text",
    "profile_summary",
    "headline",
    "fragmentation_text",
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the step's reserved peak fits a limit (None: no device and no budget known)."""

    fits: bool | None
    need: int
    limit: int
    limit_name: str

    @property
    def headroom(self) -> int:
        return self.limit - self.need

    def text(self) -> str:
        if self.fits is None:
            return "no verdict: give --device (the GPU it runs on) or --budget"
        share = f"{100 * self.need / self.limit:.1f}%" if self.limit else "-"
        if self.fits:
            return (
                f"FITS: {format_bytes(self.headroom)} free of {self.limit_name} "
                f"{format_bytes(self.limit)} (peak is {share})"
            )
        return (
            f"DOES NOT FIT: {format_bytes(-self.headroom)} over {self.limit_name} "
            f"{format_bytes(self.limit)} (peak is {share})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "need_bytes": self.need,
            "limit_bytes": self.limit,
            "limit": self.limit_name,
            "headroom_bytes": self.headroom,
            "text": self.text(),
        }


def verdict(profile: MemoryProfile, budget: int | None = None) -> Verdict:
    """Compare the reserved peak with a budget, else with the device's usable memory."""
    if budget is not None:
        return Verdict(profile.fits(budget), profile.peak_reserved, budget, "the budget")
    if profile.device_memory <= 0:
        return Verdict(None, profile.peak_reserved, 0, "")
    name = f"{profile.device} usable memory" if profile.outside_pytorch else profile.device
    return Verdict(profile.fits(), profile.peak_reserved, profile.usable_memory, name)


def headline(profile: MemoryProfile) -> str:
    """``gpt2 on h100-80gb (estimate, bf16-mixed, adamw, batch 8x1024)``."""
    details = [profile.source, profile.precision, profile.optimizer or "", profile.batch]
    shown = ", ".join(d for d in details if d and d != "as recorded")
    if profile.plan:
        shown += f"; plan: {profile.plan}"
    return f"{profile.model} on {profile.device} ({shown})"


def _where(profile: MemoryProfile) -> str:
    parts = [profile.peak_phase.value]
    if profile.peak_module:
        parts.append(f"in {profile.peak_module}")
    if profile.peak_op:
        parts.append(f"at {profile.peak_op}")
    return " ".join(parts)


def profile_text(profile: MemoryProfile, *, budget: int | None = None, top: int = 8) -> str:
    """The report as aligned text: peak and verdict, the breakdown, the largest modules.

    Args:
        profile: a predicted or measured profile.
        budget: a memory limit in bytes to judge against instead of the device.
        top: how many modules to list.
    """
    v = verdict(profile, budget)
    lines = [
        headline(profile),
        f"peak reserved   {format_bytes(profile.peak_reserved)}",
        f"peak allocated  {format_bytes(profile.peak_allocated)} ({_where(profile)})",
        f"verdict         {v.text()}",
    ]
    if profile.host_peak:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in profile.host_bytes.items())
        lines.append(f"host memory     {format_bytes(profile.host_peak)} ({parts})")
    if profile.versions:
        lines.append(f"software        {software_line(profile)}")
    lines += ["", _category_table(profile)]
    rows = fold_repeated(m for m in profile.modules if m.self_activation_bytes > 0)[:top]
    if rows:
        lines += [
            "",
            _modules_note(profile),
            format_table(
                ("module", "type", "count", "activations (own, each)", "with children"),
                [
                    (
                        r.label or "(model)",
                        r.module_type,
                        f"x{r.count}" if r.count > 1 else "",
                        format_bytes(r.self_activation_bytes),
                        format_bytes(r.activation_bytes),
                    )
                    for r in rows
                ],
                align="llrrr",
            ),
        ]
    lines += [f"warning: {w}" for w in profile.warnings]
    return "\n".join(lines)


def software_line(profile: MemoryProfile) -> str:
    """``traced with torch 2.14.1, transformers 5.25.0 (memfit 0.1.0); target torch 2.11 +
    cuDNN 9.19``: what made the profile and the stack its figures describe."""
    made = [f"{k} {v}" for k, v in profile.versions.items() if k not in ("memfit", "python")]
    verb = "traced with" if profile.source == "estimate" else "ran with"
    line = f"{verb} {', '.join(made)} (memfit {profile.versions.get('memfit', '?')})"
    target = profile.target_stack
    if profile.source == "estimate" and target:
        line += f"; target torch {target.get('torch', '?')} + cuDNN {target.get('cudnn', '?')}"
    return line


def _modules_note(profile: MemoryProfile) -> str:
    """When the module figures are taken, against the peak of the table above."""
    return (
        f"by module: what each keeps for backward, alive when forward ends; the peak above is "
        f"at {_where(profile)}, with other tensors alive, so these need not add up to it"
    )


def _category_table(profile: MemoryProfile) -> str:
    total = max(1, profile.peak_allocated)
    rows: list[tuple[str, str, str]] = []
    for category in Category:
        value = profile.by_category.get(category, 0)
        if value:
            rows.append((category.value, format_bytes(value), f"{100 * value / total:.1f}%"))
    rows.append(("= allocated", format_bytes(profile.peak_allocated), "100.0%"))
    cache = profile.peak_reserved - profile.peak_allocated
    rows.append(("+ allocator cache", format_bytes(cache), ""))
    if profile.outside_pytorch:
        for name, value in profile.outside_pytorch.items():
            rows.append((f"+ {name}", format_bytes(value), ""))
        rows.append(("= on the device", format_bytes(profile.device_total), ""))
    return format_table(("at the peak", "bytes", "share"), rows)


def profile_summary(profile: MemoryProfile, *, budget: int | None = None) -> dict[str, Any]:
    """What ``--format json`` prints: the verdict, headline numbers and the whole profile."""
    return {
        "verdict": verdict(profile, budget).to_dict(),
        "peak_reserved_bytes": profile.peak_reserved,
        "peak_allocated_bytes": profile.peak_allocated,
        "peak_host_bytes": profile.host_peak,
        "profile": profile.to_dict(),
    }


def fragmentation_text(frag: Fragmentation) -> str:
    """The fragmentation numbers of a recorded run as a table, and the advice."""
    floor = max(1, frag.live_peak)
    rows = [
        ("live peak (the floor)", format_bytes(frag.live_peak), ""),
        ("ideal packing", format_bytes(frag.ideal), f"+{100 * (frag.ideal / floor - 1):.1f}%"),
        (
            f"reserved ({frag.recorded_settings})",
            format_bytes(frag.reserved_peak),
            f"+{100 * (frag.reserved_peak / floor - 1):.1f}%",
        ),
    ]
    if frag.simulated_reserved is not None:
        rows.append(
            (
                "simulated, as run",
                format_bytes(frag.simulated_reserved),
                f"+{100 * (frag.simulated_reserved / floor - 1):.1f}%",
            )
        )
    for p in frag.predictions:
        rows.append(
            (
                f"simulated, {p.setting}",
                format_bytes(p.peak_reserved),
                f"+{100 * (p.peak_reserved / floor - 1):.1f}%",
            )
        )
    table = format_table(("fragmentation", "bytes", "over the floor"), rows)
    return f"{table}\nadvice: {frag.advice()}"
