"""A deadline on tracing: a stall becomes a MemfitError that says where the model was.

User code can loop on values fake tensors do not have (``while mask.any():`` is True forever
when memfit assumes True), and nothing else would ever stop it. ``Watchdog`` runs a timer
thread; when the deadline passes, it reads the stalled thread's Python stack, then raises
``TraceStalled`` inside that thread (``PyThreadState_SetAsyncExc``, delivered at its next Python
instruction). ``TraceStalled`` derives from ``BaseException`` so that the user's and PyTorch's
``except Exception`` clauses let it through; the watchdog turns it into an
``UnsupportedModelError`` naming the function it was in, the module being built or run, and the
operator that repeated.

Known limitations:
    * A stall inside one native call (a kernel that never returns) is reported only when that
      call returns to Python.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from torch import nn

from memfit.errors import UnsupportedModelError

__all__ = ["TraceStalled", "Watchdog", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 60.0
_OWN_CODE = (os.sep + "torch" + os.sep, os.sep + "memfit" + os.sep, "contextlib.py")


class TraceStalled(BaseException):  # noqa: N818 - delivered asynchronously, not an error
    """Raised inside the tracing thread when the deadline passes."""


def _where(frame: FrameType | None) -> tuple[str, str]:
    """The innermost frame outside torch and memfit, and the module class being built."""
    place, building = "", ""
    while frame is not None:
        code = frame.f_code
        if not place and not any(part in code.co_filename for part in _OWN_CODE):
            place = f"{code.co_name} ({code.co_filename}:{frame.f_lineno})"
        owner = frame.f_locals.get("self")
        if not building and code.co_name == "__init__" and isinstance(owner, nn.Module):
            building = type(owner).__name__
        frame = frame.f_back
    return place, building


def _repeating(ops: collections.deque[str]) -> str:
    if not ops:
        return ""
    op, count = collections.Counter(ops).most_common(1)[0]
    return f"the last {len(ops)} operators were {count} calls of {op}"


class Watchdog:
    """``with Watchdog(60, "tracing the step", recorder_ops, running):`` raises
    ``UnsupportedModelError`` if the body takes more than 60 s.

    Args:
        seconds: the deadline; None or 0 for none.
        stage: what is being done, for the message ("building the model").
        recent_ops: the operators dispatched most recently (the recorder keeps them).
        running: returns the module running now (its qualified name), or "".
    """

    def __init__(
        self,
        seconds: float | None,
        stage: str,
        recent_ops: collections.deque[str] | None = None,
        running: Callable[[], str] = lambda: "",
    ) -> None:
        self.seconds = seconds
        self.stage = stage
        self.recent_ops = recent_ops if recent_ops is not None else collections.deque()
        self.running = running
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        self._message = ""
        self._timer: threading.Timer | None = None
        self._thread_id = threading.get_ident()
        self._started = 0.0

    def __enter__(self) -> Watchdog:
        self._thread_id = threading.get_ident()
        self._started = time.monotonic()
        if self.seconds:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _expire(self) -> None:
        frame = sys._current_frames().get(self._thread_id)
        place, building = _where(frame)
        with self._lock:
            if self._done:
                return
            details = [f"in {place}" if place else ""]
            if building:
                details.append(f"building {building}")
            module = self.running()
            if module:
                details.append(f"running module '{module}'")
            details.append(_repeating(self.recent_ops))
            self._message = (
                f"memfit stopped {self.stage} after {self.seconds:g} s: "
                + ", ".join(d for d in details if d)
                + ". A loop that waits on tensor values (fake tensors have none; memfit assumes "
                "1 or True) stalls like this. If the model is only slow to trace, pass "
                "timeout_s=None or a larger number of seconds"
            )
            self._fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(TraceStalled)
            )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> Any:
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            if self._fired and not isinstance(error, TraceStalled):
                # delivered after the body ended (or not yet): withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
        if isinstance(error, TraceStalled):
            raise UnsupportedModelError(self._message) from None
        return False
