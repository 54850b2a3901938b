"""A plan as aligned text: the choice and its cost first, then the alternatives weighed."""

from __future__ import annotations

import math
import re

from memfit.plan.plan import Plan
from memfit.report.sharding_text import sharding_lines
from memfit.report.tables import format_table
from memfit.techniques import Sharding
from memfit.units import format_bytes

__all__ = ["plan_text", "tokens_per_step"]


def tokens_per_step(batch: str) -> int | None:
    """Tokens in a language model's batch (its ``input_ids``' elements), from the profile's
    batch description; None for other batches."""
    match = re.search(r"input_ids=\w+\[([\d,\s]+)\]", batch)
    if match is None:
        return None
    return math.prod(int(d) for d in match.group(1).split(",") if d.strip())


def plan_text(plan: Plan) -> str:
    """What ``memfit plan`` prints."""
    lines = [f"plan            {plan.label}"]
    if plan.profile is not None:
        profile = plan.profile
        lines += [
            f"model           {profile.model} on {plan.device} ({profile.precision}, "
            f"{profile.optimizer}, {profile.batch})",
            f"budget          {format_bytes(plan.budget)} reserved",
            f"peak reserved   {format_bytes(profile.peak_reserved)}",
            f"peak allocated  {format_bytes(profile.peak_allocated)}",
        ]
    if plan.profile is not None and plan.profile.host_peak:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in plan.profile.host_bytes.items())
        lines.append(f"host memory     {format_bytes(plan.profile.host_peak)} ({parts})")
    tokens = tokens_per_step(plan.profile.batch) if plan.profile is not None else None
    rate = f", {tokens / plan.step_time_s:,.0f} tokens/s" if tokens and plan.step_time_s else ""
    if plan.step_time_s and plan.baseline_step_time_s:
        lines.append(
            f"step time       {plan.step_time_s * 1e3:.1f} ms predicted{rate}, "
            f"{plan.overhead:+.1%} against the unmodified step "
            f"({plan.baseline_step_time_s * 1e3:.1f} ms)"
        )
    elif plan.step_time_s:
        lines.append(f"step time       {plan.step_time_s * 1e3:.1f} ms predicted{rate}")
    timed = next((p for p in plan.frontier if p.chosen and p.measured), None)
    if timed is not None:
        lines.append(
            f"measured        {timed.step_time_s * 1e3:.1f} ms a step, "
            f"{format_bytes(timed.peak_reserved)} reserved (timed on this GPU)"
        )
    for technique in plan.techniques:
        if isinstance(technique, Sharding):
            lines += sharding_lines(technique, plan.profile)
        else:
            lines.append(f"  - {technique!r}")
    lines += [f"note: {note}" for note in plan.notes]
    if plan.frontier:
        rows = [
            (
                ("* " if point.chosen else "  ") + point.label,
                format_bytes(point.peak_reserved),
                f"{point.step_time_s * 1e3:.1f} ms",
            )
            for point in sorted(plan.frontier, key=lambda p: p.peak_reserved)
        ]
        lines += [
            "",
            "alternatives weighed: screening estimates, the plans traced in full"
            + (", the plans timed on this GPU" if _any_measured(plan) else "")
            + " (* chosen)",
            format_table(("plan", "peak reserved", "step time"), rows),
        ]
    return "\n".join(lines)


def _any_measured(plan: Plan) -> bool:
    return any(p.measured for p in plan.frontier)
