"""Host time a technique's own Python adds to the operators it runs around.

Some techniques run Python per operator (selective checkpointing's dispatch mode decides every
operator of its regions, in forward and in recomputation). Their code calls ``note(kind)``
each time; the tracer ``take()``s what was noted after each operator and adds
``Calibration.<kind>_s`` per note to that operator's host time. Outside a trace the notes add
up unread (one counter per kind). Under ``torch.compile`` nothing is noted: the counter would
be a Python value the compiled code guards on, and every call would recompile.
"""

from __future__ import annotations

import threading
from collections import Counter

import torch

__all__ = ["note", "take"]

_pending = threading.local()


def note(kind: str) -> None:
    """Record one unit of ``kind`` overhead (``"selective_op"``) for the operator being run."""
    if torch.compiler.is_compiling():
        return  # traced by dynamo: only the tracer reads notes, and it never compiles
    counts = getattr(_pending, "counts", None)
    if counts is None:
        counts = _pending.counts = Counter()
    counts[kind] += 1


def take() -> Counter[str]:
    """What was noted since the last call, and reset it."""
    counts = getattr(_pending, "counts", None)
    if not counts:  # the common case, after every operator: nothing noted, nothing to reset
        return Counter()
    _pending.counts = Counter()
    return counts
