"""``memfit.plan(..., measure=N)``: time the planner's best plans on this GPU, keep the fastest.

The search predicts; where its step-time model is roughest (steps the CPU bounds, see
``host_bound``) two plans predicted a few percent apart can run in the other order. Planning
on the GPU the job runs on, the planner can settle it: the chosen plan and the next fastest
predicted ones that fit (``Option``: traced in full, or screened), ``N`` in all, run for real
(``memfit.measure.plans``), and the plan becomes the fastest one whose measured reserved peak
stays within the budget. The plan's notes give every timing beside its prediction; its
frontier gains the measured points (``FrontierPoint.measured``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memfit.devices import DeviceSpec, local_device
from memfit.errors import InvalidInputError, MemfitError
from memfit.plan.choice_notes import choice_notes
from memfit.plan.frontier import FrontierPoint
from memfit.plan.plan import Plan
from memfit.units import format_bytes

if TYPE_CHECKING:
    from memfit.measure.plans import PlanTiming
    from memfit.plan.candidates import Candidate
    from memfit.plan.verify import Verified
    from memfit.trace.estimate import StepTrace

__all__ = [
    "Found",
    "Option",
    "check_measure",
    "fitting_options",
    "measured_plan",
    "choose",
    "measured_note",
]

STEPS = 5
"""Timed steps per visit (``memfit.measure.plans.ROUNDS`` visits per plan)."""


@dataclass(frozen=True)
class Option:
    """A plan the search found to fit, as predicted.

    Attributes:
        label: its name in the frontier.
        techniques: its techniques on top of what every plan does (``Search.first``).
        peak_reserved, step_s: predicted.
        traced: its full trace, or None when only screening predicted it.
    """

    label: str
    techniques: tuple[Any, ...]
    peak_reserved: int
    step_s: float
    traced: StepTrace | None = None


def check_measure(measure: int, device: DeviceSpec, *, compile: bool, gpus: int) -> None:
    """Raise before planning unless ``measure`` plans can be timed here for ``device``.

    Raises:
        InvalidInputError: ``measure`` is not a whole number >= 0; the plan is for
            ``torch.compile`` or several GPUs; this machine's GPU is not ``device``.
        DeviceError: no GPU here.
    """
    if isinstance(measure, bool) or not isinstance(measure, int) or measure < 0:
        raise InvalidInputError(
            f"measure={measure!r}: give how many plans to time on this GPU, a whole number "
            f"(0, the default, times none; 3 times the chosen plan and the next two)"
        )
    if not measure:
        return
    if compile or gpus > 1:
        what = "torch.compile" if compile else f"gpus={gpus}"
        raise InvalidInputError(
            f"measure={measure} times eager steps on one GPU, and this plan is for {what}; "
            f"plan without measure, or time the compiled or sharded job yourself"
        )
    here = local_device()
    if here.name != device.name:
        raise InvalidInputError(
            f"measure={measure} times plans on this machine's GPU, a {here.display_name} "
            f"({here.name!r}), but the plan is for {device.name!r}; plan with "
            f"device={here.name!r} (memfit plan --device {here.name}) or without measure"
        )


@dataclass(frozen=True)
class Found:
    """What an activation search weighed (``Search.found``): its candidates, what tracing
    learnt, the chosen plan (techniques, trace) and the frontier shown."""

    candidates: Sequence[Candidate]
    verified: Verified
    chosen: tuple[tuple[Any, ...], StepTrace]
    frontier: Sequence[FrontierPoint]


def fitting_options(search: Any, found: Found) -> list[Option]:
    """The chosen plan of ``search`` (a ``search_phases.Search``), then every other candidate
    predicted to fit, fastest first: traced ones by their trace, the others by screening (as
    the search corrected it)."""
    candidates, verified, frontier = found.candidates, found.verified, found.frontier
    techniques, traced = found.chosen
    chosen_label = next(p.label for p in frontier if p.chosen).removesuffix(" (traced)")
    first = Option(chosen_label, techniques, traced.profile.peak_reserved, _seconds(traced), traced)
    others: dict[str, Option] = {}
    traced_labels = set()
    for candidate, trace in verified.traced:
        own, label = candidate.techniques(search.chunked), candidate.label(search.first_label)
        traced_labels.add(label)
        if trace is not traced and trace.profile.peak_reserved <= search.target_of(own, trace):
            peak = trace.profile.peak_reserved
            others.setdefault(label, Option(label, own, peak, _seconds(trace), trace))
    target = search.settings.target
    for candidate in candidates:
        label = candidate.label(search.first_label)
        fits = candidate.step_s > 0 and verified.peak(candidate) <= target
        if fits and label not in traced_labels:
            own = candidate.techniques(search.chunked)
            peak, step_s = int(verified.peak(candidate)), verified.step_s(candidate)
            others.setdefault(label, Option(label, own, peak, step_s))
    others.pop(chosen_label, None)
    return [first, *sorted(others.values(), key=lambda o: o.step_s)]


def measured_plan(search: Any, plan: Plan, count: int) -> Plan:
    """``plan`` (``search``'s) after timing it and the next ``count - 1`` fastest fitting
    options on this GPU."""
    if search.found is None:
        return plan  # it fitted unmodified (or with its fusions alone): nothing to choose
    options = fitting_options(search, search.found)[:count]
    import torch

    from memfit.measure.plans import first_line, time_plans  # memfit.apply: only when asked

    search.report(f"timing {len(options)} plan(s) on this GPU")
    try:
        timings = time_plans(
            search.model,
            search.batch,
            search.step,
            [(o.label, search.first + o.techniques) for o in options],
            steps=STEPS,
            progress=search.report,
        )
    except (torch.OutOfMemoryError, MemfitError) as error:  # e.g. the model alone does not fit
        note = (
            f"could not time the plans on this GPU ({first_line(error)}); the plan is the "
            f"predicted choice"
        )
        return dataclasses.replace(plan, notes=(*plan.notes, note))
    best = choose(options, timings, plan.budget)
    note = measured_note(options, timings, best, plan.budget, local_device().display_name)
    measured = [
        FrontierPoint(o.label + " (measured)", t.peak_reserved, t.step_s, measured=True)
        for o, t in zip(options, timings, strict=True)
        if t.step_s is not None
    ]
    if best is None or best == 0:
        return _with_measured(plan, measured, options[0] if best == 0 else None, note)
    option = options[best]
    traced = option.traced or search.trace(option.techniques)
    frontier = _unchosen(plan.frontier)
    remade = dataclasses.replace(
        plan,
        techniques=search.first + option.techniques,
        profile=traced.profile,
        step_time_s=traced.profile.step_time_s,
        frontier=tuple(frontier),
        notes=choice_notes(search, option.techniques, traced, frontier),
    )
    return _with_measured(remade, measured, option, note)


def choose(options: Sequence[Option], timings: Sequence[PlanTiming], budget: int) -> int | None:
    """The index of the fastest measured plan whose reserved peak stayed within ``budget``,
    or None when none ran within it."""
    ran = [
        (t.step_s, i)
        for i, t in enumerate(timings)
        if t.step_s is not None and t.peak_reserved <= budget
    ]
    return min(ran)[1] if ran else None


def measured_note(
    options: Sequence[Option],
    timings: Sequence[PlanTiming],
    best: int | None,
    budget: int,
    gpu: str,
) -> str:
    """What the timing found, plan by plan, and what was chosen."""
    parts = []
    for option, timing in zip(options, timings, strict=True):
        predicted = f"predicted {option.step_s * 1e3:.1f}"
        if timing.step_s is None:
            parts.append(f"{option.label}: did not run ({timing.error})")
            continue
        over = " (over the budget)" if timing.peak_reserved > budget else ""
        parts.append(
            f"{option.label}: {timing.step_s * 1e3:.1f} ms ({predicted}), "
            f"{format_bytes(timing.peak_reserved)} reserved{over}"
        )
    steps = max(len(t.steps_s) for t in timings)
    head = f"timed on this GPU ({gpu}; median of {steps} steps each): " + "; ".join(parts)
    if best is None:
        return head + (
            f"; none stayed within the budget of {format_bytes(budget)}, so the predicted "
            f"choice stands: plan with a larger margin (margin=0.05, --margin 0.05) to aim "
            f"further below it"
        )
    if best == 0:
        return head + "; the predicted choice is the fastest measured"
    return head + f"; chose {options[best].label}, {_against_predicted(timings, best, budget)}"


def _against_predicted(timings: Sequence[PlanTiming], best: int, budget: int) -> str:
    """Why the measured choice replaced the predicted one (``timings[0]``), and by how much."""
    first, chosen_s = timings[0].step_s, timings[best].step_s
    if first is None or chosen_s is None:
        return "the fastest measured within the budget (the predicted choice did not run)"
    change = chosen_s / first - 1
    if timings[0].peak_reserved > budget:
        # slower, yet the fastest of those that fit: the predicted choice does not
        return (
            f"the fastest measured within the budget (the predicted choice ran over it; this "
            f"plan's step is {abs(change):.0%} {'longer' if change > 0 else 'shorter'})"
        )
    return f"the fastest measured within the budget, {-change:.0%} faster than the predicted choice"


def _with_measured(
    plan: Plan, measured: list[FrontierPoint], chosen: Option | None, note: str
) -> Plan:
    """``plan`` with the measured points in its frontier (the chosen one marked) and the note."""
    if chosen is not None:
        label = chosen.label + " (measured)"
        frontier = [*_unchosen(plan.frontier)]
        measured = [dataclasses.replace(p, chosen=p.label == label) for p in measured]
    else:
        frontier = list(plan.frontier)
    return dataclasses.replace(plan, frontier=tuple(frontier + measured), notes=(*plan.notes, note))


def _seconds(traced: StepTrace) -> float:
    return traced.profile.step_time_s or float("inf")


def _unchosen(frontier: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    return [dataclasses.replace(p, chosen=False) for p in frontier]
