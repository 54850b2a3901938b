"""Estimates and a plan of the tiny LM, traced once per session (each trace takes a second)."""

from __future__ import annotations

import pytest

import memfit
from memfit.techniques import Checkpoint

from .helpers import BATCH, build


@pytest.fixture(scope="session")
def unmodified():
    """The predicted profile of the unmodified step."""
    return memfit.estimate(build, BATCH)


@pytest.fixture(scope="session")
def all_checkpointed():
    """The predicted profile with every block fully checkpointed."""
    return memfit.estimate(build, BATCH, plan=[Checkpoint(modules=("layers.*",))])


@pytest.fixture(scope="session")
def midway(unmodified, all_checkpointed):
    """A budget between the fully checkpointed and the unmodified step's reserved peaks."""
    assert all_checkpointed.peak_reserved < unmodified.peak_reserved
    return (unmodified.peak_reserved + all_checkpointed.peak_reserved) // 2


@pytest.fixture(scope="session")
def midway_plan(midway):
    return memfit.plan(build, BATCH, budget=midway)
