"""``memfit.plan(..., measure=N)`` on a real GPU (run on the device; skipped without one)."""

from __future__ import annotations

import gc

import pytest
import torch

import memfit
from memfit.devices import local_device
from memfit.techniques import Checkpoint

from .helpers import build

BATCH = "input_ids=int64[64,128]<1000 labels=int64[64,128]<1000"  # 128 positions


@pytest.mark.gpu
def test_the_plan_is_the_fastest_timed_plan_within_the_budget() -> None:
    device = local_device().name
    unmodified = memfit.estimate(build, BATCH, device=device)
    checkpointed = memfit.estimate(
        build, BATCH, device=device, plan=[Checkpoint(modules=("layers.*",))]
    )
    budget = (unmodified.peak_reserved + checkpointed.peak_reserved) // 2
    before = _allocated()
    plan = memfit.plan(build, BATCH, budget=budget, device=device, measure=3)
    timed = [p for p in plan.frontier if p.measured]
    assert timed, plan.notes
    assert plan.notes[-1].startswith("timed on this GPU (")
    within = [p for p in timed if p.peak_reserved <= budget]
    chosen = [p for p in plan.frontier if p.chosen]
    if within:  # the fastest of them is the plan
        assert chosen == [min(within, key=lambda p: p.step_time_s)]
        assert chosen[0].label.removesuffix(" (measured)") in plan.notes[-1]
    else:
        assert "the predicted choice stands" in plan.notes[-1]
    assert _allocated() <= before + 2**20  # the timed model and its state are gone


def _allocated() -> int:
    """Bytes allocated on the GPU, less cuBLAS's workspaces (kept per stream by design)."""
    gc.collect()
    torch._C._cuda_clearCublasWorkspaces()
    return torch.cuda.memory_allocated()
