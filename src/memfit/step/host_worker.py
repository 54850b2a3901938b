"""The host optimizer's worker thread: jobs run earliest-deadline-first among those ready.

Gradients reach the host in backward order (last layer first) while the next forward needs the
weights in forward order (first layer first). The worker takes, among the jobs whose gradient
has arrived, the one whose parameter the next forward uses first: during backward that is the
gradient that arrived last, and once backward is over the queue drains in forward order, so the
next forward starts as soon as its first layer is updated and the rest of the host step overlaps
it (earliest deadline first, optimal for the largest lateness on one machine: Jackson 1955).

"Arrived" means on the host, not queued: autograd's thread runs ahead of the GPU (it only
launches kernels), so a job is submitted when its gradient's copy is queued, long before the
copy is done. A job carries a ``ready`` check (its copy's CUDA event, queried without waiting);
the worker picks the earliest deadline among the ready jobs, and when none is ready, the
oldest job (the copies complete in the order they were queued, so it is the first to be
ready). Picking by deadline alone made the worker wait, on the H200, for the newest gradient
while older ones were on the host: 0.63 s per step of forwards waiting for the host step.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["HostWorker"]

Job = Callable[[], None]


@dataclass
class _Queued:
    priority: int
    order: int
    job: Job | None
    ready: Callable[[], bool] | None


class HostWorker:
    """One daemon thread running queued jobs by priority (lowest first) among the ready ones.

    Args:
        threads: the intra-op threads its torch operations use (set in the thread itself:
            OpenMP keeps the count per thread); None leaves PyTorch's default.

    An exception in a job is kept and raised by the next ``check`` or ``drain``; the jobs after
    it still run (each job's own completion signal is set by the job's ``finally``).
    """

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._queue: list[_Queued] = []
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None
        self._closed = False
        self.busy_s = 0.0  # time spent running jobs (read by benchmarks)
        self._thread = threading.Thread(target=self._run, name="memfit-host-optimizer", daemon=True)
        self._thread.start()

    def submit(self, priority: int, job: Job, ready: Callable[[], bool] | None = None) -> None:
        """Queue ``job``; among queued jobs whose ``ready()`` is true (None: always) the lowest
        ``priority`` runs first (then FIFO); when none is ready, the oldest."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the host optimizer's worker is closed")
            self._queue.append(_Queued(priority, next(self._order), job, ready))
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

    def _next(self) -> _Queued:
        """The job to run now (called with the lock held, the queue not empty)."""
        ready = [q for q in self._queue if q.ready is None or q.ready()]
        if ready:
            chosen = min(ready, key=lambda q: (q.priority, q.order))
        else:
            chosen = min(self._queue, key=lambda q: q.order)
        self._queue.remove(chosen)
        return chosen

    def _run(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue:
                    return
                queued = self._next()
            job, queued.job = queued.job, None  # the idle thread keeps no job's objects alive
            started = time.perf_counter()
            try:
                assert job is not None
                job()
            except BaseException as error:  # kept for the main thread, which raises it
                if self._error is None:
                    self._error = error
            finally:
                del job
                self.busy_s += time.perf_counter() - started
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()
