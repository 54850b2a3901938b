"""Host time a technique's own Python adds to the operators it runs around.

Some techniques run Python per operator (selective checkpointing's dispatch mode decides every
operator of its regions, in forward and in recomputation). Their code calls ``note(kind)``
each time; the tracer ``take()``s what was noted after each operator and adds
``Calibration.<kind>_s`` per note to that operator's host time. Others add Python around every
operator of a region (non-reentrant checkpointing packs each tensor a region saves through a
Python hook): inside ``with scope(kind)`` each operator takes one note of ``kind``. Notes are
kept only while the tracer ``collecting()`` runs a step (in any thread: backward may run in
autograd's own); in a real step ``note`` returns at once, since some techniques note per saved
tensor. Under ``torch.compile`` nothing is noted: the counter would be a Python value the
compiled code guards on, and every call would recompile.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

import torch

__all__ = ["collecting", "note", "scope", "take"]

_pending = threading.local()
_COLLECTING = [0]  # open collecting() blocks, in any thread


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Keep what techniques note while inside (the tracer, around the step it prices)."""
    _COLLECTING[0] += 1
    try:
        yield
    finally:
        _COLLECTING[0] -= 1


def note(kind: str) -> None:
    """Record one unit of ``kind`` overhead (``"selective_op"``) for the operator being run."""
    if torch.compiler.is_compiling() or not _COLLECTING[0]:
        return  # traced by dynamo, or no trace reading: only the tracer reads notes
    counts = getattr(_pending, "counts", None)
    if counts is None:
        counts = _pending.counts = Counter()
    counts[kind] += 1


def scope(kind: str) -> contextlib.AbstractContextManager[None]:
    """Every operator run inside takes one note of ``kind`` (nested: one per level)."""
    if torch.compiler.is_compiling() or not _COLLECTING[0]:
        # a null context, which dynamo traces on every supported torch (2.6's breaks the graph
        # at a generator's context manager)
        return contextlib.nullcontext()
    return _scoped(kind)


@contextlib.contextmanager
def _scoped(kind: str) -> Iterator[None]:
    scopes = getattr(_pending, "scopes", None)
    if scopes is None:
        scopes = _pending.scopes = Counter()
    scopes[kind] += 1
    try:
        yield
    finally:
        scopes[kind] -= 1
        if not scopes[kind]:
            del scopes[kind]


def take() -> Counter[str]:
    """What was noted since the last call, and reset it; with one note per open scope."""
    counts = getattr(_pending, "counts", None)
    scopes = getattr(_pending, "scopes", None)
    if not counts and not scopes:  # the common case, after every operator: nothing to add
        return Counter()
    _pending.counts = Counter()
    taken = counts or Counter()
    if scopes:
        taken.update(scopes)
    return taken
