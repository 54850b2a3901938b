"""FusedOptimizer: Adam/AdamW switched to the fused kernel, the same update, switched back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit.apply.fused_optimizer import use_fused
from memfit.errors import InvalidInputError
from memfit.step.undo import applied
from memfit.techniques import Checkpoint, FusedOptimizer
from tests.helpers import VOCAB, tiny_gpt2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(32, 64, generator=generator)).pow(2).mean().backward()
        optimizer.step()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_it_steps_as_fused_does_and_switches_back(kind) -> None:
    runs = {}
    for name in ("switched", "midway", "fused", "foreach"):
        model = _model()
        optimizer = kind(model.parameters(), lr=1e-2, fused=name == "fused" or None)
        undo = use_fused(optimizer) if name == "switched" else None
        _train(model, optimizer, 2, seed=1)  # state (and step counts) exist from here
        if name == "midway":
            undo = use_fused(optimizer)
        assert optimizer.param_groups[0]["fused"] is (name != "foreach" or None)
        _train(model, optimizer, 2, seed=2)
        runs[name] = _weights(model)
        if undo is not None:
            undo()
            assert optimizer.param_groups[0]["fused"] is None
            assert optimizer.param_groups[0]["foreach"] is None
            _train(model, optimizer, 1, seed=3)  # the default implementation steps again
    # bit for bit what fused=True gives; within float32 rounding of the multi-tensor step
    assert all(torch.equal(a, b) for a, b in zip(runs["switched"], runs["fused"], strict=True))
    for name in ("switched", "midway"):
        for switched, foreach in zip(runs[name], runs["foreach"], strict=True):
            torch.testing.assert_close(switched, foreach, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(runs["fused"], runs["foreach"], strict=True))


def test_apply_switches_the_optimizer_and_undo_puts_it_back() -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    step = memfit.apply([FusedOptimizer()], model, optimizer)
    assert [(g["fused"], g["foreach"]) for g in optimizer.param_groups] == [(True, False)]
    batch = {
        "input_ids": torch.randint(0, VOCAB, (2, 16)),
        "labels": torch.randint(0, VOCAB, (2, 16)),
    }
    assert torch.isfinite(step(batch))
    memfit.Plan(techniques=(FusedOptimizer(),)).undo(model)
    assert [(g["fused"], g["foreach"]) for g in optimizer.param_groups] == [(None, True)]
    assert not applied(model)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda params: torch.optim.SGD(params, lr=0.1), "Adam and AdamW to fused=True, not a SGD"),
        (
            lambda params: torch.optim.Adam(params, differentiable=True),
            "differentiable=True",
        ),
    ],
)
def test_refused_before_anything_changes(make, says) -> None:
    model = tiny_gpt2()
    optimizer = make(model.parameters())
    plan = [Checkpoint(modules=("blocks.*",)), FusedOptimizer()]
    with pytest.raises(InvalidInputError, match=says):
        memfit.apply(plan, model, optimizer)
    assert not applied(model)  # the checkpointing was not applied either
    assert optimizer.param_groups[0].get("fused") in (None, False)


def test_without_an_optimizer_there_is_nothing_to_switch() -> None:
    model = tiny_gpt2()
    step = memfit.apply([FusedOptimizer()], model)
    batch = {
        "input_ids": torch.randint(0, VOCAB, (2, 16)),
        "labels": torch.randint(0, VOCAB, (2, 16)),
    }
    assert torch.isfinite(step(batch))


@pytest.mark.slow
def test_the_estimate_is_that_of_the_fused_optimizer() -> None:
    from tests.plan.helpers import BATCH, build

    switched = memfit.estimate(build, BATCH, optimizer="adamw", plan=[FusedOptimizer()])
    fused = memfit.estimate(build, BATCH, optimizer="adamw-fused")
    foreach = memfit.estimate(build, BATCH, optimizer="adamw")
    assert switched.peak_reserved == fused.peak_reserved
    assert switched.peak_allocated == fused.peak_allocated
    assert switched.step_time_s == fused.step_time_s
    assert switched.plan == "fused optimizer step"
    # the multi-tensor step holds temporaries the fused one does not
    assert foreach.step_time_s is not None and fused.step_time_s is not None
    assert foreach.step_time_s > fused.step_time_s


@pytest.mark.gpu
def test_step_counts_move_to_the_device_and_back() -> None:
    model = _model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(32, 64, device="cuda")).pow(2).mean().backward()
        optimizer.step()
    steps = lambda: {s["step"].device.type for s in optimizer.state.values()}  # noqa: E731
    assert steps() == {"cpu"}
    undo = use_fused(optimizer)
    assert steps() == {"cuda"}
    model(torch.randn(32, 64, device="cuda")).pow(2).mean().backward()
    optimizer.step()
    undo()
    assert steps() == {"cpu"}
    optimizer.step()
