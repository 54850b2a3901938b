"""find_batch_size on CPU against a fake memory limit of N x T <= limit."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from memfit.errors import InvalidInputError
from memfit.guard import OOMUnrecoverableError, find_batch_size
from memfit.guard.predict import estimate_largest_batch
from tests.kept import assert_same, fingerprint

from .faults import Budget, make_model


def _setup(limit: float):
    budget = Budget(limit=limit)
    model = make_model(budget)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)

    def make_batch(b: int):
        x = torch.randn(b, 4, 6, generator=gen, dtype=torch.float64)
        return {"x": x, "y": torch.randn(b, 3, generator=gen, dtype=torch.float64)}

    def step_fn(batch):
        model.train()
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()
        opt.zero_grad()

    return budget, model, opt, make_batch, step_fn


def test_finds_the_largest_fitting_batch_by_doubling_then_bisection() -> None:
    budget, model, opt, make_batch, step_fn = _setup(limit=4 * 37)
    result = find_batch_size(model, make_batch, optimizer=opt, step_fn=step_fn, use_estimate=False)
    assert result.batch_size == 37 and result.smallest_failing == 38
    assert [t.batch_size for t in result.trials] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert [t.fits for t in result.trials][-3:] == [True, False, True]
    assert result.trials[6].oom is not None and result.trials[6].oom.requested_bytes == 2 * 1024**3
    assert result.predicted is None


def test_model_optimizer_modes_and_rng_are_restored_exactly() -> None:
    _, model, opt, make_batch, step_fn = _setup(limit=4 * 20)
    opt.zero_grad()
    F.mse_loss(
        model(torch.ones(2, 4, 6, dtype=torch.float64)), torch.zeros(2, 3).double()
    ).backward()
    opt.step()  # some optimizer state to keep
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in opt.state[model.l1.weight].items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    find_batch_size(model, make_batch, optimizer=opt, step_fn=step_fn, start=8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for k, v in opt.state[model.l1.weight].items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    assert not model.training and not model.l1.training
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("ending", ["error", "interrupted", "returns"])
def test_a_step_that_casts_freezes_and_fails_changes_nothing(ending: str) -> None:
    """Whatever the trials did (cast the weights, froze one, stepped, changed the learning
    rate) and however they ended, the model and optimizer are exactly as before."""
    _, model, opt, make_batch, step_fn = _setup(limit=4 * 20)
    step_fn(make_batch(2))  # optimizer state, and gradients left behind
    F.mse_loss(model(make_batch(2)["x"]), make_batch(2)["y"]).backward()
    before = fingerprint(model, opt)
    calls = []

    def meddling_step(batch):
        calls.append(len(calls))
        step_fn(batch)
        model.float()
        model.l1.weight.requires_grad_(False)
        opt.param_groups[0]["lr"] = 1.0
        if len(calls) == 3 and ending != "returns":
            raise RuntimeError("the user's step failed") if ending == "error" else KeyboardInterrupt
        model.double()

    failure = {"error": RuntimeError, "interrupted": KeyboardInterrupt}.get(ending)
    if failure is None:
        find_batch_size(model, make_batch, optimizer=opt, step_fn=meddling_step, start=2)
    else:
        with pytest.raises(failure):
            find_batch_size(model, make_batch, optimizer=opt, step_fn=meddling_step, start=2)
    assert len(calls) >= 3
    assert_same(before, fingerprint(model, opt))


def test_a_prediction_saves_trials_and_multiple_of_and_margin_apply() -> None:
    _, model, opt, make_batch, step_fn = _setup(limit=4 * 37)
    guessed = find_batch_size(model, make_batch, optimizer=opt, step_fn=step_fn, predict=lambda: 36)
    assert guessed.batch_size == 37 and guessed.predicted == 36
    assert [t.batch_size for t in guessed.trials] == [36, 72, 54, 45, 40, 38, 37]
    eights = find_batch_size(
        model, make_batch, optimizer=opt, step_fn=step_fn, start=8, multiple_of=8, margin=0.1
    )
    assert eights.largest_fitting == 32 and eights.batch_size == 24  # 32 * 0.9 -> 28 -> 24


def test_estimator_is_optional_and_its_guess_is_used(monkeypatch, caplog) -> None:
    _, model, opt, make_batch, step_fn = _setup(limit=4 * 37)
    with caplog.at_level(logging.INFO, logger="memfit.guard"):
        result = find_batch_size(model, make_batch, optimizer=opt, step_fn=step_fn)
    assert result.predicted is None and result.trials[0].batch_size == 1  # clean fallback
    assert any("no estimated batch size" in r.getMessage() for r in caplog.records)

    import memfit.guard.predict as trace_estimate  # where the guard calls estimate

    calls = []

    def fake_estimate(model, batch, **kwargs):
        size = batch()["x"].shape[0]
        calls.append((size, kwargs["optimizer"], kwargs["precision"]))
        return SimpleNamespace(peak_reserved=1000 + 100 * size)

    monkeypatch.setattr(trace_estimate, "estimate", fake_estimate)
    guess = estimate_largest_batch(model, make_batch, opt, budget_bytes=4650)
    assert guess == 36 and calls == [(1, "adamw", "fp32"), (8, "adamw", "fp32")]

    def broken(*args, **kwargs):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(trace_estimate, "estimate", broken)
    assert estimate_largest_batch(model, make_batch, opt, budget_bytes=4650) is None


def test_nothing_fits() -> None:
    _, model, opt, make_batch, step_fn = _setup(limit=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(OOMUnrecoverableError, match="even a batch of 1 does not fit"):
        find_batch_size(model, make_batch, optimizer=opt, step_fn=step_fn, start=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": 1.5}, "margin=1.5"),
        ({"multiple_of": 0}, "multiple_of=0"),
        ({"steps_per_trial": 0}, "steps_per_trial=0"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    _, model, opt, make_batch, _ = _setup(limit=10)
    with pytest.raises(InvalidInputError, match=match):
        find_batch_size(model, make_batch, optimizer=opt, **kwargs)
    with pytest.raises(InvalidInputError, match="make_batch=3 is not callable"):
        find_batch_size(model, 3)  # type: ignore[arg-type]
