"""The host optimizer's worker thread: jobs run earliest-deadline-first.

Gradients reach the host in backward order (last layer first) while the next forward needs the
weights in forward order (first layer first). The worker takes, among the jobs whose gradient
has arrived, the one whose parameter the next forward uses first: during backward that is the
gradient that arrived last, and once backward is over the queue drains in forward order, so the
next forward starts as soon as its first layer is updated and the rest of the host step overlaps
it (earliest deadline first, optimal for the largest lateness on one machine: Jackson 1955).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import torch

__all__ = ["HostWorker"]

Job = Callable[[], None]


class HostWorker:
    """One daemon thread running queued jobs by priority (lowest first).

    Args:
        threads: the intra-op threads its torch operations use (set in the thread itself:
            OpenMP keeps the count per thread); None leaves PyTorch's default.

    An exception in a job is kept and raised by the next ``check`` or ``drain``; the jobs after
    it still run (each job's own completion signal is set by the job's ``finally``).
    """

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._queue: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None
        self._closed = False
        self.busy_s = 0.0  # time spent running jobs (read by benchmarks)
        self._thread = threading.Thread(target=self._run, name="memfit-host-optimizer", daemon=True)
        self._thread.start()

    def submit(self, priority: int, job: Job) -> None:
        """Queue ``job``; among queued jobs the lowest ``priority`` runs first (then FIFO)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the host optimizer's worker is closed")
            heapq.heappush(self._queue, (priority, next(self._order), job))
            self._pending += 1
            self._lock.notify_all()

    def drain(self) -> None:
        """Wait until every queued job has run; raise the first error a job raised."""
        with self._lock:
            while self._pending:
                self._lock.wait()
        self.check()

    def check(self) -> None:
        """Raise (once) the error a job raised, if any."""
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"the host optimizer step failed: {error}") from error

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join()

    def _run(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue:
                    return
                _, _, job = heapq.heappop(self._queue)
            started = time.perf_counter()
            try:
                job()
            except BaseException as error:  # kept for the main thread, which raises it
                if self._error is None:
                    self._error = error
            finally:
                del job  # the idle thread must not keep the last job's objects alive
                self.busy_s += time.perf_counter() - started
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()
