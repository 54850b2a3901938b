"""What a measured step's readings become in its profile: the timeline of the GPU's counters,
and a note when the GPU's software stack is not the one memfit's device model was measured on."""

from __future__ import annotations

from memfit.profile import Phase, TimelineEvent
from memfit.trace.cuda.stack import DEFAULT_STACK

__all__ = ["Reading", "stack_warnings", "timeline"]

Reading = tuple[Phase, int, int, str, int]  # phase, allocated, reserved, operator, trace index


def stack_warnings(ran: dict[str, str]) -> tuple[str, ...]:
    """A note when this GPU's torch or cuDNN is not the stack memfit's device model was
    measured on: predictions for this machine should name its stack."""
    modelled = DEFAULT_STACK.to_dict()
    if ran == modelled:
        return ()
    return (
        f"measured with torch {ran['torch']} + cuDNN {ran['cudnn'] or 'none'}; memfit's device "
        f"model was measured on {DEFAULT_STACK.describe()}: predict for this machine with "
        f"--torch-version {ran['torch']} --cudnn-version {ran['cudnn'] or '?'}",
    )


def timeline(readings: list[Reading], limit: int = 2000) -> tuple:
    """At most ``limit`` timeline points: the highest reading of each run of readings."""
    if not readings:
        return ()
    bucket = max(1, -(-len(readings) // limit))
    points = []
    for start in range(0, len(readings), bucket):
        best = max(range(start, min(len(readings), start + bucket)), key=lambda i: readings[i][1])
        phase, allocated, reserved, op, _ = readings[best]
        points.append(
            TimelineEvent(
                index=best,
                phase=phase,
                allocated=allocated,
                reserved=reserved,
                op=op.removesuffix(".default"),
            )
        )
    return tuple(points)
