"""What every plan does first: fuse the optimizer step where it applies, and leave out
micro-batching where it would not be exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit import zoo
from memfit.techniques import FusedOptimizer

from .helpers import BATCH, build


def _fused(plan: memfit.Plan) -> bool:
    return any(isinstance(t, FusedOptimizer) for t in plan.techniques)


@pytest.mark.slow
def test_the_default_adamw_is_made_fused_and_the_rest_fits_around_it(midway, midway_plan):
    assert _fused(midway_plan)
    assert midway_plan.profile.peak_reserved <= midway * 0.98
    without = memfit.plan(build, BATCH, budget=midway, allow=("checkpoint", "chunked_loss"))
    assert not _fused(without)
    # the fused step holds no temporaries: the same budget needs less of everything else
    assert midway_plan.step_time_s <= without.step_time_s


@pytest.mark.slow
def test_optimizers_given_as_factories(midway):
    adamw = memfit.plan(build, BATCH, budget=midway, optimizer=lambda p: torch.optim.AdamW(p))
    assert _fused(adamw)
    sgd = memfit.plan(build, BATCH, budget=midway, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert not _fused(sgd)  # no fused kernel to switch to: the trace of it was refused
    already = memfit.plan(build, BATCH, budget=midway, optimizer="adamw-fused")
    assert not _fused(already)


@pytest.mark.slow
def test_micro_batching_is_left_out_for_batchnorm_models():
    unmodified = memfit.estimate("resnet50", batch_size=16)
    plan = memfit.plan("resnet50", batch_size=16, budget=int(unmodified.peak_reserved * 0.8))
    assert plan.profile is not None and plan.profile.peak_reserved <= plan.budget * 0.98
    assert not any(isinstance(t, memfit.MicroBatch) for t in plan.techniques)
    assert not any("micro-batch" in point.label for point in plan.frontier)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in zoo.get("resnet50").build().modules())
    said = f"micro-batching left out: {batchnorms} BatchNorm layers"
    assert any(said in note for note in plan.notes)
