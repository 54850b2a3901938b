"""What the planner left out because it failed, and why: never dropped silently.

A technique or candidate whose trace fails for this model (its applier refuses a module, the
model has no LM head, an optimizer has no fused kernel) is left out of the search; the plan's
notes (``memfit plan`` prints them, its JSON keeps them) and a budget-infeasible error say
what was left out and the tracer's reason.
"""

from __future__ import annotations

__all__ = ["dropped_note", "REASON_CHARS"]

REASON_CHARS = 300  # a tracer's message names the module and the fix in its first sentences


def dropped_note(what: str, reason: str) -> str:
    """``left out <what>: <reason>``, the reason cut to ``REASON_CHARS``."""
    reason = " ".join(reason.split())
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 3] + "..."
    return f"left out {what}: {reason}"
