"""The planner's last phase: plans fragmentation keeps out, traced again with expandable
segments (``memfit.plan.expandable``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import memfit
from memfit.plan.candidates import Candidate
from memfit.plan.expandable import EXPANDABLE_GAIN, with_expandable_segments
from memfit.plan.policies import Policy
from memfit.plan.verify import Verified
from memfit.techniques import ExpandableSegments

FULL = Policy("full", (), 0, 0.01)
TARGET = 100


def _traced(reserved: int, allocated: int, step_s: float) -> SimpleNamespace:
    profile = SimpleNamespace(peak_reserved=reserved, peak_allocated=allocated, step_time_s=step_s)
    return SimpleNamespace(profile=profile)


def _candidate(k: int) -> Candidate:
    return Candidate(FULL, tuple(f"b{i}" for i in range(k)), 1, 1, 100, 100, 1.0)


def _search(traced: list[tuple[Candidate, SimpleNamespace]], expanded: dict[int, int]):
    """Traced candidates (k blocks each) and what each reserves with expandable segments."""
    verified = Verified(0)
    verified.traced = traced  # type: ignore[assignment]
    calls: list[tuple] = []

    def trace(techniques: tuple) -> SimpleNamespace:
        calls.append(techniques)
        blocks = len(techniques[0].modules)
        return _traced(expanded[blocks], 90, 1.0)

    return verified, calls, trace


def test_the_fastest_plan_kept_out_by_fragmentation_is_traced_again() -> None:
    chosen = (_candidate(4), _traced(95, 80, 1.20))  # fits: 4 blocks checkpointed, 1.20 s
    nearly = (_candidate(3), _traced(104, 92, 1.15))  # allocated fits, reserved does not
    fastest = (_candidate(2), _traced(108, 99, 1.10))  # the same, faster
    too_big = (_candidate(1), _traced(112, 101, 1.00))  # allocated alone is over: never
    verified, calls, trace = _search([chosen, nearly, fastest, too_big], {2: 101, 3: 98})
    found = with_expandable_segments(
        verified, (chosen[0].techniques(None), chosen[1]), None, trace, lambda t, s: TARGET
    )
    # 2 blocks first (fastest): 101 with expandable segments, still over; then 3 blocks: fits
    assert [len(c[0].modules) for c in calls] == [2, 3]
    assert found is not None
    techniques, traced, before = found
    assert isinstance(techniques[-1], ExpandableSegments)
    assert before is nearly[0] and traced.profile.peak_reserved == 98


@pytest.mark.parametrize("step_s", [1.199, 1.25])
def test_no_setting_for_no_faster_step(step_s: float) -> None:
    chosen = (_candidate(4), _traced(95, 80, 1.20))
    nearly = (_candidate(3), _traced(104, 92, step_s))  # within 0.5% of the chosen, or slower
    verified, calls, trace = _search([chosen, nearly], {3: 98})
    found = with_expandable_segments(
        verified, (chosen[0].techniques(None), chosen[1]), None, trace, lambda t, s: TARGET
    )
    assert found is None and calls == []


def test_with_nothing_chosen_any_plan_that_then_fits_is_taken() -> None:
    nearly = (_candidate(3), _traced(104, 92, 2.0))
    verified, calls, trace = _search([nearly], {3: 99})
    found = with_expandable_segments(verified, None, None, trace, lambda t, s: TARGET)
    assert found is not None and found[2] is nearly[0]


@pytest.mark.slow
def test_a_plan_says_so_and_allow_leaves_it_out(midway: int, midway_plan) -> None:
    """The tiny model at a budget between its unmodified and fully checkpointed peaks: with
    expandable segments a plan with fewer checkpointed blocks fits."""
    from memfit.plan.expandable import EXPANDABLE_NOTE
    from memfit.techniques import default_allow

    from .helpers import BATCH, build

    assert midway_plan.of(ExpandableSegments), midway_plan.label
    assert EXPANDABLE_NOTE in midway_plan.notes
    assert midway_plan.profile.peak_reserved <= midway * 0.98
    without = memfit.plan(
        build,
        BATCH,
        budget=midway,
        allow=[a for a in default_allow() if a != "expandable_segments"],
    )
    assert not without.of(ExpandableSegments) and EXPANDABLE_NOTE not in without.notes
    assert midway_plan.step_time_s < without.step_time_s * (1 - EXPANDABLE_GAIN)


def test_nothing_to_gain_where_the_allocator_expands_already(monkeypatch) -> None:
    from memfit.plan.expandable import expandable_already
    from memfit.trace.allocator import AllocatorSettings
    from memfit.trace.settings import StepSettings

    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert not expandable_already(StepSettings())
    assert expandable_already(StepSettings(allocator=AllocatorSettings(expandable_segments=True)))
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert expandable_already(StepSettings())
    assert not expandable_already(StepSettings(allocator=AllocatorSettings()))  # given: it wins
