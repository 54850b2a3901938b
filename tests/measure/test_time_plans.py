"""Timing plans for the planner's ``measure=N``: the loop, run on a CPU (no timing asserted)."""

from __future__ import annotations

import pytest
import torch

from memfit.errors import DeviceError, InvalidInputError
from memfit.measure.plans import ROUNDS, time_plans
from memfit.step.undo import applied
from memfit.techniques import Checkpoint, MicroBatch
from memfit.trace.settings import StepSettings
from tests.plan.helpers import BATCH, build

CPU = torch.device("cpu")
SETTINGS = StepSettings(precision="fp32")


def test_each_plan_runs_its_rounds_and_a_failing_one_is_reported() -> None:
    plans = [
        ("unmodified", ()),
        ("full ckpt x2", (Checkpoint(modules=("layers.0", "layers.1")),)),
        ("micro-batch x2", (MicroBatch(n=2),)),
        ("no such block", (Checkpoint(modules=("nowhere.*",)),)),
    ]
    timings = time_plans(build, BATCH, SETTINGS, plans, steps=2, device=CPU)
    assert [t.label for t in timings] == [label for label, _ in plans]
    for timing in timings[:3]:
        assert timing.error == ""
        assert len(timing.steps_s) == ROUNDS * 2
        assert timing.step_s is not None and timing.step_s > 0
    failed = timings[3]
    assert failed.step_s is None and failed.steps_s == ()
    assert "nowhere.*" in failed.error


def test_the_users_module_is_trained_meanwhile_and_put_back_exactly() -> None:
    model = build().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plans = [("unmodified", ()), ("full ckpt x4", (Checkpoint(modules=("layers.*",)),))]
    progress: list[str] = []
    time_plans(model, BATCH, SETTINGS, plans, steps=1, device=CPU, progress=progress.append)
    assert not applied(model)
    assert "forward" not in vars(model.layers[0])  # no checkpointed forward left behind
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert progress[0] == "timing unmodified (round 1 of 2)"
    assert len(progress) == ROUNDS * len(plans)


def test_bad_arguments_and_no_gpu_are_refused_before_anything_runs() -> None:
    with pytest.raises(InvalidInputError, match="steps >= 1"):
        time_plans(build, BATCH, SETTINGS, [("unmodified", ())], steps=0, device=CPU)
    with pytest.raises(InvalidInputError, match="at least one plan"):
        time_plans(build, BATCH, SETTINGS, [], device=CPU)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees none"):
            time_plans(build, BATCH, SETTINGS, [("unmodified", ())])
