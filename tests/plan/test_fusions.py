"""The fusions every plan starts with: the optimizer's fused step, only where it applies."""

from __future__ import annotations

import torch

import memfit
from memfit.plan.techniques import FusedOptimizer

from .helpers import BATCH, build


def _fused(plan: memfit.Plan) -> bool:
    return any(isinstance(t, FusedOptimizer) for t in plan.techniques)


def test_the_default_adamw_is_made_fused_and_the_rest_fits_around_it(midway, midway_plan):
    assert _fused(midway_plan)
    assert midway_plan.profile.peak_reserved <= midway * 0.98
    without = memfit.plan(build, BATCH, budget=midway, allow=("checkpoint", "chunked_loss"))
    assert not _fused(without)
    # the fused step holds no temporaries: the same budget needs less of everything else
    assert midway_plan.step_time_s <= without.step_time_s


def test_optimizers_given_as_factories(midway):
    adamw = memfit.plan(build, BATCH, budget=midway, optimizer=lambda p: torch.optim.AdamW(p))
    assert _fused(adamw)
    sgd = memfit.plan(build, BATCH, budget=midway, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert not _fused(sgd)  # no fused kernel to switch to: the trace of it was refused
    already = memfit.plan(build, BATCH, budget=midway, optimizer="adamw-fused")
    assert not _fused(already)
