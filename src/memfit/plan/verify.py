"""Tracing screened candidates until the fastest one that really fits is found.

Screening (``candidates.py``) only orders the candidates; each one the planner may choose is
traced in full (the tracer and the allocator simulation), fastest first, and screening's memory
estimates are corrected by what each trace showed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memfit.plan.candidates import Candidate
from memfit.trace.estimate import StepTrace

__all__ = ["Tracer", "trace_fastest_fitting"]

Tracer = Callable[..., StepTrace]  # techniques -> the step traced with them in force


def trace_fastest_fitting(
    candidates: list[Candidate],
    target: int,
    static: int,
    trace: Tracer,
    head: str,
    max_traces: int,
) -> tuple[tuple[tuple[Any, ...], StepTrace] | None, list[tuple[Candidate, StepTrace]]]:
    """Trace candidates fastest first; keep the fastest that really fits.

    After each trace, screening's estimate of the memory that depends on the plan is rescaled
    by how far it was off (a secant step, in either direction), so that the next candidate
    traced is the fastest one that now looks like it fits: closing in on the fastest plan
    that fits from both sides. Screening errs differently with and without micro-batching
    and the chunked loss (each changes what the allocator can reuse), so each of these four
    families has its own correction, learnt from its own traces (none until one is traced).
    """
    traced_points: list[tuple[Candidate, StepTrace]] = []
    tried: set[int] = set()
    best: tuple[Candidate, StepTrace] | None = None
    scales: dict[tuple[bool, bool], float] = {}

    def predicted(candidate: Candidate) -> float:
        scale = scales.get(_family(candidate), 1.0)
        return static + (candidate.peak_reserved - static) * scale

    for _ in range(max_traces):
        fitting = [
            c
            for c in candidates
            if id(c) not in tried
            and predicted(c) <= target
            and (best is None or c.step_s < best[0].step_s)
        ]
        if not fitting:
            break
        candidate = min(fitting, key=lambda c: c.step_s)
        tried.add(id(candidate))
        traced = trace(candidate.techniques(head))
        traced_points.append((candidate, traced))
        if traced.profile.peak_reserved <= target:
            best = (candidate, traced)
        expected = candidate.peak_reserved - static
        if expected > 0:
            ratio = (traced.profile.peak_reserved - static) / expected
            scales[_family(candidate)] = min(3.0, max(0.3, ratio))
    if best is not None:
        return (best[0].techniques(head), best[1]), traced_points
    # nothing fitted: fall back on the most memory-saving candidates, first without
    # micro-batching (which keeps all gradients alive across micro-batches), then any
    single = [c for c in candidates if c.micro_batches == 1]
    fallbacks = [max(single, key=_key)] if single else []
    fallbacks.append(min(candidates, key=lambda c: (c.peak_reserved, [-x for x in _key(c)])))
    for candidate in fallbacks:
        if id(candidate) in tried:
            continue
        tried.add(id(candidate))
        traced = trace(candidate.techniques(head))
        traced_points.append((candidate, traced))
        if traced.profile.peak_reserved <= target:
            return (candidate.techniques(head), traced), traced_points
    return None, traced_points


def _family(candidate: Candidate) -> tuple[bool, bool]:
    return candidate.micro_batches > 1, candidate.chunks > 1


def _key(candidate: Candidate) -> tuple[int, ...]:
    """How much a candidate does to save memory: more blocks, stronger policy, chunked loss."""
    strength = {"none": 0, "pointwise": 1, "selective": 2, "full": 3, "offloaded": 4}[
        candidate.policy.kind
    ]
    return (
        len(candidate.blocks),
        strength,
        len(candidate.rest),
        candidate.chunks,
        candidate.micro_batches,
    )
