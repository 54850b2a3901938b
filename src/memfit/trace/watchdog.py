"""A deadline on tracing: a stall becomes a MemfitError that says where the model was.

User code can loop on values fake tensors do not have (``while mask.any():`` is True forever
when memfit assumes True), and nothing else would ever stop it. ``Watchdog`` runs a timer
thread; when the deadline passes, it reads the stalled thread's Python stack and asks the
recorder to stop (``request_stop``): the recorder raises ``TraceStalled`` at the next read of a
tensor value, where loops on values turn and raising is safe. Any other loop is interrupted a
few seconds later by raising ``TraceStalled`` inside the thread itself
(``PyThreadState_SetAsyncExc``, delivered at its next Python instruction). ``TraceStalled``
derives from ``BaseException`` so that the user's and PyTorch's ``except Exception`` clauses let
it through; the watchdog turns it into an ``UnsupportedModelError`` naming the function it was
in, the module being built or run, and the operators that repeated.

Known limitations:
    * A stall inside one native call (a kernel that never returns) is reported only when that
      call returns to Python.
    * The asynchronous exception (loops that read no tensor value) could land in a callback run
      from native code; the recorder's own stop comes first for every loop on tensor values.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from torch import nn

from memfit.errors import UnsupportedModelError

__all__ = ["TraceStalled", "Watchdog", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 60.0
GRACE_S = 5.0  # after the deadline, before interrupting a loop that runs no operator
_OWN_CODE = (os.sep + "torch" + os.sep, os.sep + "memfit" + os.sep, "contextlib.py")
# Python's own library: the deadline may fall inside one of its frames (a weakref callback the
# garbage collector runs), which is not where the user's code loops
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


class TraceStalled(BaseException):  # noqa: N818 - delivered asynchronously, not an error
    """Raised inside the tracing thread when the deadline passes."""


def _users(filename: str) -> bool:
    """Whether code in ``filename`` is the user's (or a library's they use): not torch, memfit
    or Python's own library."""
    if any(part in filename for part in _OWN_CODE):
        return False
    installed = "site-packages" in filename or "dist-packages" in filename
    return installed or not filename.startswith(_STDLIB)


def _where(frame: FrameType | None) -> tuple[str, str]:
    """The innermost frame outside torch and memfit, and the module class being built."""
    place, building = "", ""
    while frame is not None:
        code = frame.f_code
        if not place and _users(code.co_filename):
            place = f"{code.co_name} ({code.co_filename}:{frame.f_lineno})"
        owner = frame.f_locals.get("self")
        if not building and code.co_name == "__init__" and isinstance(owner, nn.Module):
            building = type(owner).__name__
        frame = frame.f_back
    return place, building


def _repeating(ops: collections.deque[str]) -> str:
    if not ops:
        return ""
    common = collections.Counter(ops).most_common(4)
    top = common[0][1]
    names = ", ".join(op for op, count in common if count == top)
    return f"repeating {names} ({top} times each in the last {len(ops)} operators)"


class Watchdog:
    """``with Watchdog(60, "tracing the step", recorder_ops, running):`` raises
    ``UnsupportedModelError`` if the body takes more than 60 s.

    Args:
        seconds: the deadline; None or 0 for none.
        stage: what is being done, for the message ("building the model").
        recent_ops: the operators dispatched most recently (the recorder keeps them).
        running: returns the module running now (its qualified name), or "".
        request_stop: asks the code being watched to raise ``TraceStalled`` at its next safe
            point (the recorder's next read of a tensor value).
    """

    def __init__(
        self,
        seconds: float | None,
        stage: str,
        recent_ops: collections.deque[str] | None = None,
        running: Callable[[], str] = lambda: "",
        request_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.seconds = seconds
        self.stage = stage
        self.recent_ops = recent_ops if recent_ops is not None else collections.deque()
        self.running = running
        self.request_stop = request_stop
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        self._interrupted = False
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
            self.request_stop()
            self._timer = threading.Timer(GRACE_S, self._interrupt)
            self._timer.daemon = True
            self._timer.start()

    def _interrupt(self) -> None:
        with self._lock:
            if not self._done:
                self._interrupted = True
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
            if self._interrupted and not isinstance(error, TraceStalled):
                # delivered after the body ended (or not yet): withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
        if isinstance(error, TraceStalled):
            raise UnsupportedModelError(self._message) from None
        return False
