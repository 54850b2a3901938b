"""``memfit.plan(..., measure=N)``: the plans timed on the GPU decide (timings faked on a CPU)."""

from __future__ import annotations

import pytest

import memfit
import memfit.measure.plans as timing
import memfit.plan.measured as measured
from memfit.devices import DEFAULT_DEVICE, get_device
from memfit.errors import DeviceError, InvalidInputError
from memfit.measure.plans import PlanTiming
from memfit.plan.measured import Option, choose, measured_note

from .helpers import BATCH, build

GiB = 2**30


def _options(*seconds: float) -> list[Option]:
    return [Option(f"plan {i}", (), GiB, s) for i, s in enumerate(seconds)]


def _timing(label: str, seconds: float | None, peak: int = GiB, error: str = "") -> PlanTiming:
    steps = () if seconds is None else (seconds,) * 4
    return PlanTiming(label, (), steps, peak, error)


def test_the_fastest_measured_within_the_budget_is_chosen() -> None:
    timings = [_timing("a", 0.030), _timing("b", 0.020, peak=3 * GiB), _timing("c", 0.025)]
    assert choose(_options(0.02, 0.03, 0.04), timings, budget=2 * GiB) == 2
    # out of memory or an error: never chosen
    timings[2] = _timing("c", None, error="out of memory (...)")
    assert choose(_options(0.02, 0.03, 0.04), timings, budget=2 * GiB) == 0
    over = [_timing("a", 0.030, peak=3 * GiB)]
    assert choose(_options(0.02), over, budget=2 * GiB) is None


def test_the_note_gives_each_timing_beside_its_prediction() -> None:
    options = _options(0.020, 0.022, 0.030)
    timings = [_timing("a", 0.031), _timing("b", 0.026), _timing("c", None, error="out of memory")]
    note = measured_note(options, timings, 1, 2 * GiB, "NVIDIA H200")
    assert note.startswith("timed on this GPU (NVIDIA H200; median of 4 steps each): ")
    assert "plan 0: 31.0 ms (predicted 20.0), 1.00 GiB reserved" in note
    assert "plan 2: did not run (out of memory)" in note
    assert note.endswith(
        "chose plan 1, the fastest measured within the budget, 16% faster than the predicted choice"
    )
    # measured run 4 (H100, the encoder at 0.3): the predicted choice ran over the budget, and
    # the plan chosen instead took 73% longer; the note had said "-73% faster"
    over = [_timing("a", 0.0852, peak=3 * GiB), _timing("b", 0.1477)]
    note = measured_note(options[:2], over, 1, 2 * GiB, "H100")
    assert note.endswith(
        "chose plan 1, the fastest measured within the budget (the predicted choice ran over "
        "it; this plan's step is 73% longer)"
    )
    none = measured_note(options[:1], [_timing("a", 0.03, 3 * GiB)], None, 2 * GiB, "H200")
    assert "(over the budget)" in none and "the predicted choice stands" in none


def test_bad_values_and_no_gpu_are_refused_before_planning(monkeypatch) -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidInputError, match="measure="):
            memfit.plan(build, BATCH, budget=GiB, measure=bad)
    monkeypatch.setattr(measured, "local_device", _no_gpu)
    with pytest.raises(DeviceError, match="torch sees none"):
        memfit.plan(build, BATCH, budget=GiB, measure=2)
    monkeypatch.setattr(measured, "local_device", lambda: get_device("l4"))
    with pytest.raises(InvalidInputError, match="but the plan is for"):
        memfit.plan(build, BATCH, budget=GiB, measure=2, device="h200")
    with pytest.raises(InvalidInputError, match="torch.compile"):
        memfit.plan(build, BATCH, budget=GiB, measure=2, compile=True)


def _no_gpu():
    raise DeviceError("device 'cuda' asks for the local GPU, but torch sees none")


def test_a_faster_measured_plan_replaces_the_predicted_choice(monkeypatch, midway) -> None:
    monkeypatch.setattr(measured, "local_device", lambda: get_device(DEFAULT_DEVICE))
    timed: list[list[str]] = []

    def fake_time_plans(model, batch, settings, plans, *, steps, progress):
        timed.append([label for label, _ in plans])
        # the last plan offered runs fastest; the first (the predicted choice) slowest
        return [
            _timing(label, 0.050 - 0.010 * i, peak=midway // 2)
            for i, (label, _) in enumerate(plans)
        ]

    monkeypatch.setattr(timing, "time_plans", fake_time_plans)
    predicted = memfit.plan(build, BATCH, budget=midway)
    plan = memfit.plan(build, BATCH, budget=midway, measure=3)
    labels = timed[0]
    assert len(labels) == 3
    chosen_before = next(p for p in predicted.frontier if p.chosen).label
    assert labels[0] == chosen_before.removesuffix(" (traced)")
    assert plan.label != predicted.label
    points = {p.label: p for p in plan.frontier}
    winner = points[labels[2] + " (measured)"]
    assert winner.chosen and winner.measured
    assert winner.step_time_s == pytest.approx(0.030)
    assert [p.label for p in plan.frontier if p.chosen] == [winner.label]
    assert sum(p.measured for p in plan.frontier) == 3
    assert plan.notes[-1].endswith(f"chose {labels[2]}, the fastest measured within the budget, "
                                   f"40% faster than the predicted choice")  # fmt: skip
    assert plan.profile is not None and plan.profile.peak_reserved <= midway
    # the options after the chosen one are the next fastest predicted that fit
    assert plan.step_time_s is not None and predicted.step_time_s is not None
    assert plan.step_time_s >= predicted.step_time_s


def test_when_the_predicted_choice_is_fastest_it_stays(monkeypatch, midway) -> None:
    monkeypatch.setattr(measured, "local_device", lambda: get_device(DEFAULT_DEVICE))
    monkeypatch.setattr(
        timing,
        "time_plans",
        lambda model, batch, settings, plans, **_: [
            _timing(label, 0.020 + 0.010 * i, peak=midway // 2)
            for i, (label, _) in enumerate(plans)
        ],
    )
    predicted = memfit.plan(build, BATCH, budget=midway)
    plan = memfit.plan(build, BATCH, budget=midway, measure=2)
    assert plan.techniques == predicted.techniques
    assert plan.notes[-1].endswith("the predicted choice is the fastest measured")
    assert [p.measured for p in plan.frontier if p.chosen] == [True]


def test_a_model_that_cannot_run_here_keeps_the_predicted_plan_with_a_note(
    monkeypatch, midway
) -> None:
    import torch

    monkeypatch.setattr(measured, "local_device", lambda: get_device(DEFAULT_DEVICE))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(timing, "time_plans", out_of_memory)
    predicted = memfit.plan(build, BATCH, budget=midway)
    plan = memfit.plan(build, BATCH, budget=midway, measure=2)
    assert plan.techniques == predicted.techniques
    assert plan.notes[-1] == (
        "could not time the plans on this GPU (CUDA out of memory. Tried to allocate 2.00 GiB); "
        "the plan is the predicted choice"
    )
    assert not any(p.measured for p in plan.frontier)
