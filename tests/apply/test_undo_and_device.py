"""One documented undo for every applied plan, and autocast for the device the model is on."""

from __future__ import annotations

import warnings

import pytest
import torch

import memfit
from memfit.techniques import Checkpoint, ChunkedLoss, MicroBatch, MixedPrecision
from tests.helpers import tiny_gpt2, token_batch

HAND_MADE = [Checkpoint(modules=("layers.0",)), MicroBatch(n=2), ChunkedLoss(chunks=4)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _plain(model: torch.nn.Module) -> bool:
    return all(m.forward.__func__ is type(m).forward for m in model.modules())


@pytest.mark.parametrize("how", ["step.undo()", "memfit.undo(model)"])
def test_a_hand_made_plan_is_undone_and_the_model_estimated_again(how: str) -> None:
    model = tiny_gpt2().float()
    optimizer = torch.optim.AdamW(model.parameters())
    before = _state(model)
    step = memfit.apply(HAND_MADE, model, optimizer)
    assert not _plain(model)
    if how == "step.undo()":
        step.undo()
    else:
        memfit.undo(model)
    assert _plain(model) and not memfit.apply.applied(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # what failed before ("module 'layers.0' is already checkpointed"): predicting a plan again
    profile = memfit.estimate(model, token_batch(), plan=HAND_MADE, precision="fp32")
    assert profile.plan and profile.peak_allocated > 0
    assert _plain(model)


def test_a_plan_from_the_planner_has_the_same_undo() -> None:
    model = tiny_gpt2().float()
    before = _state(model)
    plan = memfit.plan(model, token_batch(), budget="16GiB", precision="fp32")
    step = memfit.apply(plan, model, torch.optim.AdamW(model.parameters()))
    step(token_batch())
    step.undo()
    assert _plain(model)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # it trained; the structure is back, the weights are the trained ones


def test_a_model_on_the_cpu_runs_cpu_autocast_without_a_cuda_warning() -> None:
    model = tiny_gpt2().float()
    dtypes: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    step = memfit.apply([MixedPrecision("bf16-mixed")], model, torch.optim.SGD(model.parameters()))
    assert step.device_type == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "CUDA is not available ... Disabling autocast" fails
        step(token_batch())
    assert dtypes == [torch.bfloat16]  # the plan's precision ran, not a silent fp32
    step.undo()


def test_the_device_type_can_still_be_given() -> None:
    model = tiny_gpt2().float()
    step = memfit.apply([], model, device_type="cuda", precision="fp32")
    assert step.device_type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.undo()  # a plan that changed nothing: nothing to undo, nothing to warn about
