"""The tracer's fewer garbage collections: raised within, the caller's setting restored after."""

from __future__ import annotations

import gc

import pytest
import torch

import memfit
from memfit.gc_threshold import TRACE_THRESHOLD, fewer_collections


@pytest.fixture
def caller_threshold():
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    yield
    gc.set_threshold(*before)


def test_raised_within_and_restored_after(caller_threshold) -> None:
    with fewer_collections():
        assert gc.get_threshold() == (TRACE_THRESHOLD, 11, 12)
    assert gc.get_threshold() == (700, 11, 12)


def test_restored_when_the_block_raises(caller_threshold) -> None:
    with pytest.raises(KeyError), fewer_collections():
        raise KeyError("the user's model")
    assert gc.get_threshold() == (700, 11, 12)


def test_a_disabled_collector_or_a_higher_threshold_is_left_alone(caller_threshold) -> None:
    gc.set_threshold(0)
    with fewer_collections():
        assert gc.get_threshold()[0] == 0
    gc.set_threshold(10**6, 11, 12)
    with fewer_collections():
        assert gc.get_threshold() == (10**6, 11, 12)


def test_the_tracer_runs_with_it_and_gives_the_setting_back(caller_threshold) -> None:
    seen = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            seen.append(gc.get_threshold()[0])
            return super().forward(x)

    memfit.estimate(lambda: Probe(8, 8), "float32[2,8]", optimizer=None)
    assert seen and all(value == TRACE_THRESHOLD for value in seen)
    assert gc.get_threshold() == (700, 11, 12)
