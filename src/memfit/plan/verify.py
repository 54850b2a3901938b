"""Tracing screened candidates until the fastest one that really fits is found.

Screening (``candidates.py``) only orders the candidates; each one the planner may choose is
traced in full (the tracer and the allocator simulation), fastest first, and screening's memory
estimates are corrected by what each trace showed. A candidate is worth tracing while screening
says it fits and is faster than the best traced one *as traced*: a screened time is an
estimate, sometimes slower than the trace (LLaMA-1B's checkpointed and lean blocks: 192.4 ms
screened, 184.5 traced), sometimes faster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memfit.errors import MemfitError
from memfit.plan.candidates import Candidate
from memfit.techniques import ChunkedLoss
from memfit.trace.estimate import StepTrace

__all__ = ["Tracer", "Verified", "trace_fastest_fitting"]

NEAR_MISS = 0.05
"""How far above the target screening may put a candidate that is still worth a trace when
it would be much faster than the best traced (``trace_fastest_fitting``). Screening's
corrected reserved peaks came out more than 5% above their traces for 17 of 118 traced
candidates (``bench/results/plan_phases.json``: bench/plans.py's 32 budgets of 8 models,
planned on a CPU); of the 6 near misses traced there, one fitted as it was (the 6-layer
encoder at its full checkpointing's memory, with offloaded boundaries: 41.0 ms a step
predicted, where the search had found 64.6 ms; expandable segments now find 38.0) and two with
expandable segments (``memfit.plan.expandable``: BERT-base at half its activations 95.3 ->
91.9 ms, the encoder at three quarters 29.4 -> 26.5 ms)."""

NEAR_MISS_GAIN = 0.10
"""How much faster than the best traced plan such a near miss must be screened."""

NEAR_MISS_TRACES = 2
"""The most near misses traced in one search: each trace is planning time."""

Tracer = Callable[..., StepTrace]  # techniques -> the step traced with them in force


class Verified:
    """What tracing learnt: the traces, the candidates that failed to trace (``dropped``:
    label and why), and screening's memory and time corrected per family.

    Screening errs differently with and without micro-batching and the chunked loss (each
    changes what the allocator can reuse), so each of these four families has its own
    correction, learnt from its own traces (none until one is traced): the memory that
    depends on the plan is rescaled by how far the last trace of the family was off (a secant
    step, in either direction). Within a family, candidates of one shape (the same policies,
    other block counts) err alike, so a shape's own last trace, where there is one, corrects
    it before the family's does: LLaMA-1B's full checkpointing with offloaded boundaries
    beside lean blocks traced at 0.65-0.75 of its screened activations, the same without
    offloading at 0.74. Screened times are rescaled too, but only downwards and by the fastest
    ratio the shape (or family) has traced at: a shape traced faster than screened makes its
    other candidates worth a trace (LLaMA-1B's at 0.96-0.98: screening prices a fully
    checkpointed block about 0.65 ms dearer than its trace), while one traced slower rules
    none out (traces alone decide, as ``best_s`` does).
    """

    def __init__(self, static: int) -> None:
        self.static = static
        self.traced: list[tuple[Candidate, StepTrace]] = []
        self.dropped: list[tuple[str, str]] = []
        self.scales: dict[tuple, float] = {}  # by family and by shape
        self.time_scales: dict[tuple, float] = {}

    def peak(self, candidate: Candidate) -> float:
        """Screening's reserved peak of ``candidate``, corrected by its family's traces."""
        scale = _learnt(self.scales, candidate)
        return self.static + (candidate.peak_reserved - self.static) * scale

    def step_s(self, candidate: Candidate) -> float:
        """Screening's step time of ``candidate``, corrected (never upwards) by its shape's or
        family's traces."""
        return candidate.step_s * _learnt(self.time_scales, candidate)

    def learn(self, candidate: Candidate, traced: StepTrace) -> None:
        self.traced.append((candidate, traced))
        keys = (_family(candidate), _shape(candidate))
        expected = candidate.peak_reserved - self.static
        if expected > 0:
            ratio = (traced.profile.peak_reserved - self.static) / expected
            self.scales.update(dict.fromkeys(keys, min(3.0, max(0.3, ratio))))
        traced_s = traced.profile.step_time_s
        if traced_s and candidate.step_s > 0:
            ratio = max(0.5, traced_s / candidate.step_s)
            for key in keys:
                self.time_scales[key] = min(ratio, self.time_scales.get(key, 1.0))


def trace_fastest_fitting(
    candidates: list[Candidate],
    target: int,
    static: int,
    trace: Tracer,
    chunked: ChunkedLoss | None,
    max_traces: int,
    target_of: Callable[[tuple[Any, ...], StepTrace], int] | None = None,
) -> tuple[tuple[tuple[Any, ...], StepTrace] | None, Verified]:
    """Trace candidates fastest first; keep the fastest that really fits.

    The next candidate traced is the fastest one that screening, corrected, says fits and is
    faster than the best traced so far: closing in on the fastest plan that fits from both
    sides. Once ``max_traces`` are spent, the candidates that would beat the best one on both
    memory and time by screening (its frontier would show them dominating the chosen plan)
    are traced too, up to three more: a plan is never chosen over one its own frontier shows
    to be smaller and faster (``plan_frontier`` leaves out the few such estimates the
    traces did not reach). A candidate whose trace fails (its techniques refuse this model) is
    left out and recorded in ``Verified.dropped`` with the reason; the search goes on.
    Then up to ``NEAR_MISS_TRACES`` candidates that screening puts just above the target
    (within ``NEAR_MISS``) are traced when they would beat the best by ``NEAR_MISS_GAIN``:
    screening scales memory and cannot see how the allocator's blocks will pack, which the
    trace can (an encoder's checkpointed blocks with offloaded boundaries screened at 2.09e9 B,
    2% above the target, and traced at 1.99e9, where the plan chosen without them was 70%
    slower).
    ``target_of(techniques, traced)``, where given, is the peak a traced plan must keep to
    (a class of plans held further below the budget), else ``target``.
    """
    verified = Verified(static)
    tried: set[int] = set()
    best: tuple[Candidate, StepTrace] | None = None

    def best_s() -> float:
        return best[1].profile.step_time_s or best[0].step_s if best is not None else float("inf")

    def attempt(candidate: Candidate) -> None:
        nonlocal best
        tried.add(id(candidate))
        techniques = candidate.techniques(chunked)
        try:
            traced = trace(techniques)
        except MemfitError as error:
            verified.dropped.append((candidate.label(), str(error)))
            return
        verified.learn(candidate, traced)
        limit = target if target_of is None else target_of(techniques, traced)
        fits = traced.profile.peak_reserved <= limit
        if fits and (traced.profile.step_time_s or candidate.step_s) < best_s():
            best = (candidate, traced)

    for spent in range(max_traces + min(3, max_traces)):
        pool = [
            c
            for c in candidates
            if id(c) not in tried and verified.peak(c) <= target and verified.step_s(c) < best_s()
        ]
        if spent >= max_traces:  # only those the frontier would show beating the best
            if best is None:
                break
            pool = [c for c in pool if verified.peak(c) <= best[1].profile.peak_reserved]
        if not pool:
            break
        attempt(min(pool, key=verified.step_s))
    for _ in range(NEAR_MISS_TRACES):  # screened just above the target, and much faster
        bar = best_s() / (1 + NEAR_MISS_GAIN)
        near = [
            c
            for c in candidates
            if id(c) not in tried
            and verified.peak(c) <= target * (1 + NEAR_MISS)
            and verified.step_s(c) < bar
        ]
        if not near:
            break
        attempt(min(near, key=verified.step_s))
    if best is not None:
        return (best[0].techniques(chunked), best[1]), verified
    # nothing fitted: fall back on the most memory-saving candidates, first without
    # micro-batching (which keeps all gradients alive across micro-batches), then any other
    single = [c for c in candidates if c.micro_batches == 1]
    if single and id(strongest := max(single, key=_key)) not in tried:
        attempt(strongest)
        if best is not None:
            return (best[0].techniques(chunked), best[1]), verified
    others = [c for c in candidates if id(c) not in tried]
    if others:
        attempt(min(others, key=lambda c: (c.peak_reserved, [-x for x in _key(c)])))
    if best is not None:
        return (best[0].techniques(chunked), best[1]), verified
    return None, verified


def _family(candidate: Candidate) -> tuple[bool, bool]:
    return candidate.micro_batches > 1, candidate.chunks > 1


def _shape(candidate: Candidate) -> tuple:
    """The family and the policies: the candidates that differ only in how many blocks."""
    rest = candidate.rest_policy.kind if candidate.rest and candidate.rest_policy else None
    return (*_family(candidate), candidate.policy.kind, rest)


def _learnt(scales: dict[tuple, float], candidate: Candidate) -> float:
    """The correction of the candidate's shape, else of its family, else none."""
    return scales.get(_shape(candidate), scales.get(_family(candidate), 1.0))


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
