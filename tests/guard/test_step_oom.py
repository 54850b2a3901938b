"""Out-of-memory errors inside ``optimizer.step()``: the step is retried, not the batch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import memfit
from memfit.guard import OOMGuard, OOMUnrecoverableError

from .faults import (
    MESSAGE,
    Budget,
    TransientStepFaults,
    make_data,
    make_model,
    moving_limits,
)

STEPS = 600


def _train(batches, *, faults: bool, seed: int = 5):
    """A user's plain step function, guarded as the README shows: ``memfit.OOMGuard(step)``."""
    budget = Budget()
    model = make_model(budget)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.8)
    rng = random.Random(seed)
    step_faults = TransientStepFaults({s for s in range(STEPS) if rng.random() < 0.02})
    if faults:
        step_faults.attach(opt)
    limits = moving_limits(STEPS, seed=seed) if faults else {}

    def train_step(batch):
        opt.zero_grad()
        loss = F.mse_loss(model(batch["x"]), batch["y"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        return loss.detach()

    guarded = memfit.OOMGuard(train_step, grow_after=5)
    for i, batch in enumerate(batches):
        if i in limits:
            budget.limit, budget.where = limits[i]
        step_faults.step = i
        guarded(batch)
    return model, opt, budget, step_faults, guarded


@pytest.mark.slow
def test_600_steps_with_moving_limits_and_transient_step_ooms_match_a_fault_free_run() -> None:
    batches = make_data(STEPS, seed=9)
    ref, ref_opt, _, _, _ = _train(batches, faults=False)
    got, got_opt, budget, step_faults, guard = _train(batches, faults=True)
    wheres = {where for where, _ in budget.log}
    assert wheres == {"forward", "backward"} and budget.raised >= 15
    assert step_faults.raised >= 5  # about 2% of 600 steps
    metrics = guard.metrics
    assert metrics.steps == STEPS
    assert metrics.ooms == budget.raised + step_faults.raised
    assert metrics.step_ooms == metrics.step_retries == step_faults.raised
    assert metrics.shrinks > 0 and metrics.grows > 0
    assert not metrics.lean_optimizer  # transient: the step as configured worked on retry
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        assert (q - p).abs().max() <= 1e-9 * p.abs().max()
    assert got_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        for key, value in ref_opt.state[p].items():
            torch.testing.assert_close(got_opt.state[q][key], value, rtol=1e-9, atol=0)


class _StepNeedsPerParameter(torch.optim.AdamW):
    """Runs out of memory whenever it steps with the multi-tensor kernels."""

    def step(self, closure=None):
        if any(g["foreach"] is not False for g in self.param_groups):
            raise torch.OutOfMemoryError(MESSAGE)
        return super().step(closure)


def _setup(optimizer_cls, **kwargs):
    model = make_model(Budget())
    opt = optimizer_cls(model.parameters(), lr=0.01, **kwargs)

    def step_fn(batch):
        opt.zero_grad()
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()

    return model, opt, step_fn


def test_a_step_that_fits_only_per_parameter_steps_so_from_then_on() -> None:
    batches = make_data(5, seed=3)
    model, opt, step_fn = _setup(_StepNeedsPerParameter, foreach=True)
    ref_model, ref_opt, ref_step = _setup(torch.optim.AdamW, foreach=False)
    guard = OOMGuard(step_fn)
    for batch in batches:
        guard(batch)
        ref_step(batch)
    assert guard.metrics.lean_optimizer and opt.param_groups[0]["foreach"] is True
    assert guard.metrics.step_ooms == 2  # as configured, then again; per parameter from then on
    assert guard.metrics.shrinks == 0 and guard.metrics.micro_batch_size == len(batches[-1]["x"])
    for p, q in zip(ref_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


class _NeverFits(torch.optim.SGD):
    def step(self, closure=None):
        raise torch.OutOfMemoryError(MESSAGE)


def test_a_step_that_never_fits_raises_with_the_optimizers_figures_and_the_fix() -> None:
    model, opt, step_fn = _setup(_NeverFits, momentum=0.9)
    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(OOMUnrecoverableError) as caught:
        guard(make_data(1, seed=4)[0])
    message = str(caught.value)
    assert caught.value.phase == "optimizer step"
    for words in (
        "3 tries",
        "per parameter",
        "_NeverFits over 4 tensors",
        "gradients",
        "fused",
        "low-bit",
        "offload",
        "tried 2.00 GiB",
    ):
        assert words in message, words
    assert guard.metrics.step_ooms == 3 and guard.metrics.shrinks == 0  # never a smaller batch
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None  # as before the step


def test_a_step_that_changed_the_gradients_is_not_retried_on_them() -> None:
    class _EatsGradients(torch.optim.SGD):
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.grad.mul_(2)
            raise torch.OutOfMemoryError(MESSAGE)

    model, opt, step_fn = _setup(_EatsGradients)
    with pytest.raises(memfit.MemfitError, match="changed the gradient"):
        OOMGuard(step_fn)(make_data(1, seed=4)[0])


def test_the_optimizer_and_model_are_found_from_what_the_function_refers_to() -> None:
    model, opt, step_fn = _setup(torch.optim.SGD)
    guard = OOMGuard(step_fn)
    assert guard.optimizer is opt and guard.model is model


def test_a_function_with_no_or_two_optimizers_is_told_to_pass_one() -> None:
    a = torch.optim.SGD(make_model(Budget()).parameters(), lr=0.1)
    b = torch.optim.SGD(make_model(Budget()).parameters(), lr=0.1)

    def two(batch):
        a.step()
        b.step()

    with pytest.raises(
        memfit.MemfitError, match=r"refers to 2: a \(SGD\), b \(SGD\).*optimizer=opt"
    ):
        OOMGuard(two)
    with pytest.raises(memfit.MemfitError, match="refers to none.*optimizer=opt"):
        OOMGuard(lambda batch: None)


def test_the_optimizer_is_found_on_a_trainer_object_and_a_bound_method() -> None:
    class Trainer:
        def __init__(self) -> None:
            self.model = make_model(Budget())
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

        def step(self, batch):
            self.optimizer.zero_grad()
            F.mse_loss(self.model(batch["x"]), batch["y"]).backward()
            self.optimizer.step()

    trainer = Trainer()
    guard = OOMGuard(trainer.step)
    assert guard.optimizer is trainer.optimizer and guard.model is trainer.model

    def step_fn(batch):
        trainer.step(batch)

    assert OOMGuard(step_fn).optimizer is trainer.optimizer


def test_a_train_step_retries_its_optimizer_step_in_place() -> None:
    batches = make_data(20, seed=6)

    def train(faults: bool):
        model = make_model(Budget())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        step = memfit.TrainStep(
            model,
            opt,
            loss_fn=lambda out, batch: F.mse_loss(out, batch["y"]),
            forward=lambda m, batch: m(batch["x"]),
        )
        step_faults = TransientStepFaults({3, 4, 11} if faults else set())
        step_faults.attach(opt)
        guard = OOMGuard(step)
        losses = []
        for i, batch in enumerate(batches):
            step_faults.step = i
            losses.append(guard(batch))
        return model, losses, guard

    ref, ref_losses, _ = train(False)
    got, losses, guard = train(True)
    assert guard.metrics.step_retries == 3 and guard.metrics.shrinks == 0
    assert torch.equal(torch.stack(losses), torch.stack(ref_losses))
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        assert torch.equal(p, q)
