"""trace_fastest_fitting: screening's memory corrected per family of candidates."""

from __future__ import annotations

from types import SimpleNamespace

from memfit.plan.candidates import Candidate
from memfit.plan.policies import Policy
from memfit.plan.verify import trace_fastest_fitting
from memfit.techniques import ChunkedLoss

HEAD = ChunkedLoss(1, head="head")  # the loss chunked candidates compute

NONE = Policy("none", (), 0, 0.0)


def _candidate(micro: int, chunks: int, screened: int, step_s: float) -> Candidate:
    return Candidate(NONE, (), micro, chunks, screened, screened, step_s)


def _tracer(truth: dict[tuple, int], calls: list[tuple]):
    def trace(techniques: tuple) -> SimpleNamespace:
        calls.append(techniques)
        return SimpleNamespace(profile=SimpleNamespace(peak_reserved=truth[techniques]))

    return trace


def test_a_miss_of_the_chunked_loss_does_not_rule_out_micro_batching() -> None:
    # screening says both fit (100 of 110, 50 static); the chunked loss really needs 130
    chunked = _candidate(1, 4, 100, 1.0)
    halves = _candidate(2, 1, 100, 2.0)
    truth = {chunked.techniques(HEAD): 130, halves.techniques(HEAD): 105}
    calls: list[tuple] = []
    chosen, traced = trace_fastest_fitting(
        [chunked, halves], 110, 50, _tracer(truth, calls), HEAD, 4
    )
    # one correction for all (x1.6) would have put micro-batching at 130 and left it untried
    assert chosen is not None and chosen[0] == halves.techniques(HEAD)
    assert [c for c, _ in traced] == [chunked, halves]


def test_the_correction_holds_within_a_family() -> None:
    # the faster of two chunked-loss plans misses by 60%; the slower one, rescaled, too
    fast, slow = _candidate(1, 4, 100, 1.0), _candidate(1, 8, 90, 1.5)
    fallback = _candidate(1, 16, 60, 3.0)
    truth = {fast.techniques(HEAD): 130, slow.techniques(HEAD): 114}
    truth[fallback.techniques(HEAD)] = 70
    calls: list[tuple] = []
    chosen, traced = trace_fastest_fitting(
        [fast, slow, fallback], 110, 50, _tracer(truth, calls), HEAD, 4
    )
    # 50 + 40 * 1.6 = 114 > 110: the slower plan is skipped, the next that fits is traced
    assert [c for c, _ in traced] == [fast, fallback]
    assert chosen is not None and chosen[0] == fallback.techniques(HEAD)
