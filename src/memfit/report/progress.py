"""A progress line on stderr for work that takes more than a moment.

Nothing is drawn for the first ``delay`` seconds, so quick commands stay quiet; after that a bar
(when the amount of work is known) or a ticking clock (when it is not) is redrawn in place, and
cleared when the work ends. Disabled with ``--quiet``, ``--format json`` or a non-terminal stderr.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 28


class Progress:
    """``with Progress("packing", total=n) as p: ... p.advance(k)``.

    Args:
        label: what is being done ("tracing gpt2").
        total: units of work, or None for a clock only.
        enabled: False draws nothing.
        delay: seconds before anything is drawn.
        stream: where to draw (default: stderr).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        delay: float = 1.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stage = ""
        self.stream = stream or sys.stderr
        self.enabled = enabled and (stream is not None or self.stream.isatty())
        self.delay = delay
        self._start = time.monotonic()
        self._drawn = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._drawn:
            self.stream.write("\r" + " " * (len(self.line()) + 2) + "\r")
            self.stream.flush()

    def set_stage(self, stage: str) -> None:
        """Show what is being done now, after the label ("tracing forward ...")."""
        with self._lock:
            self.stage = stage

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more units of work done."""
        with self._lock:
            self.done += count

    def line(self) -> str:
        """The text drawn now: label, bar or clock, elapsed seconds."""
        elapsed = time.monotonic() - self._start
        label = f"{self.label}: {self.stage}" if self.stage else self.label
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            return f"{label} [{bar}] {100 * share:3.0f}% {elapsed:5.1f}s"
        return f"{label} ... {elapsed:5.1f}s"

    def _tick(self) -> None:
        if self._stop.wait(self.delay):
            return
        while True:
            with self._lock:
                self.stream.write("\r" + self.line() + "  ")
                self.stream.flush()
                self._drawn = True
            if self._stop.wait(0.2):
                return
