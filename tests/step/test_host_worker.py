"""The host optimizer's worker: earliest deadline first among the jobs whose data is ready, the
oldest job when none is (its copy completes first), errors kept for the main thread."""

from __future__ import annotations

import threading

import pytest

from memfit.step.host_worker import HostWorker


def _run(jobs: list[tuple[str, int, bool | None]]) -> list[str]:
    """Submit ``(name, priority, ready)`` behind a gate (so all are queued), return the order
    they ran in. ``ready=None``: no readiness check."""
    worker = HostWorker()
    gate, ran = threading.Event(), []
    worker.submit(-1, gate.wait)
    for name, priority, ready in jobs:
        check = None if ready is None else (lambda value=ready: value)
        worker.submit(priority, lambda name=name: ran.append(name), check)
    gate.set()
    worker.drain()
    worker.close()
    return ran


def test_the_earliest_deadline_runs_first_among_ready_jobs() -> None:
    order = _run([("late", 5, True), ("not ready", 0, False), ("early", 3, True)])
    assert order == ["early", "late", "not ready"]


def test_without_a_ready_job_the_oldest_runs() -> None:
    assert _run([("old", 9, False), ("new", 1, False)]) == ["old", "new"]


def test_without_checks_it_is_earliest_deadline_first() -> None:
    assert _run([("b", 2, None), ("a", 1, None), ("c", 3, None)]) == ["a", "b", "c"]


def test_an_error_is_raised_once_and_the_other_jobs_still_run() -> None:
    worker, ran = HostWorker(), []

    def fail() -> None:
        raise ValueError("boom")

    worker.submit(0, fail)
    worker.submit(1, lambda: ran.append(1))
    with pytest.raises(RuntimeError, match="boom"):
        worker.drain()
    worker.drain()  # raised once
    worker.close()
    assert ran == [1]
