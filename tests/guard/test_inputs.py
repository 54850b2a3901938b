"""Bad input gives a MemfitError that names the value and the fix; so does a hopeless OOM."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from memfit.errors import InvalidInputError, MemfitError
from memfit.guard import OOMGuard, OOMUnrecoverableError, UnsplittableBatchError

from .faults import Budget, make_data, make_model


def _setup(limit: float = float("inf")):
    budget = Budget(limit=limit)
    model = make_model(budget)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        opt.zero_grad()
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()

    return budget, model, opt, step_fn


def test_step_that_is_not_callable() -> None:
    _, model, opt, _ = _setup()
    with pytest.raises(InvalidInputError, match="not callable.*step_fn\\(batch\\)"):
        OOMGuard("train", optimizer=opt, model=model)


def test_function_without_optimizer() -> None:
    _, model, _, _ = _setup()

    def step_fn(batch):
        F.mse_loss(model(batch["x"]), batch["y"]).backward()

    with pytest.raises(
        InvalidInputError, match="refers to none.*OOMGuard\\(.*step_fn, optimizer=opt"
    ):
        OOMGuard(step_fn, model=model)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("min_micro_batch_size", 0, "min_micro_batch_size=0 must be an integer >= 1"),
        ("grow_after", -1, "grow_after=-1"),
        ("loss_reduction", "avg", "loss_reduction='avg' is not one of 'mean', 'sum'"),
        ("optimizer_copy", "gpu", "optimizer_copy='gpu'"),
        ("splitter", 3, "splitter=3 is not callable"),
    ],
)
def test_bad_settings(option: str, value: object, match: str) -> None:
    _, model, opt, step_fn = _setup()
    with pytest.raises(InvalidInputError, match=match):
        OOMGuard(step_fn, optimizer=opt, model=model, **{option: value})


def test_batch_it_cannot_split_says_how_to_pass_a_splitter() -> None:
    _, model, opt, step_fn = _setup()

    class Opaque:
        pass

    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    with pytest.raises(UnsplittableBatchError, match="Opaque.*splitter=fn"):
        guard({"x": torch.zeros(4, 2, 6), "extra": Opaque()})
    with pytest.raises(
        UnsplittableBatchError, match=r"batch\['y'\] has 3 rows but batch\['x'\] has 4"
    ):
        guard({"x": torch.zeros(4, 2, 6), "y": torch.zeros(3, 3)})
    assert isinstance(UnsplittableBatchError("x"), MemfitError)


def test_custom_splitter_is_used() -> None:
    budget, model, opt, _ = _setup(limit=20)

    class Pair:  # an object the walker cannot read
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

    def step_fn(batch):
        opt.zero_grad()
        F.mse_loss(model(batch.x), batch.y).backward()
        opt.step()

    def splitter(batch, sizes):
        return [Pair(x, y) for x, y in zip(batch.x.split(sizes), batch.y.split(sizes), strict=True)]

    data = make_data(1, sizes=(12,), lengths=(4,))[0]
    guard = OOMGuard(step_fn, optimizer=opt, model=model, splitter=splitter)
    guard(Pair(data["x"], data["y"]))
    assert budget.raised >= 1 and guard.metrics.num_micro_batches > 1


def test_minimum_micro_batch_larger_than_the_batch() -> None:
    _, model, opt, step_fn = _setup()
    guard = OOMGuard(step_fn, optimizer=opt, model=model, min_micro_batch_size=8)
    with pytest.raises(
        InvalidInputError, match="min_micro_batch_size=8 is larger than this batch of 7"
    ):
        guard(make_data(1, sizes=(7,))[0])


def test_one_sample_does_not_fit(caplog: pytest.LogCaptureFixture) -> None:
    budget, model, opt, step_fn = _setup(limit=3)  # one sample holds 4 or 6 tokens
    before = [p.detach().clone() for p in model.parameters()]
    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    with caplog.at_level(logging.INFO, logger="memfit.guard"):
        with pytest.raises(OOMUnrecoverableError, match="micro-batches of 1 sample") as info:
            guard(make_data(1, sizes=(8,))[0])
    assert info.value.oom.requested_bytes == 2 * 1024**3
    assert "tried 2.00 GiB, 1.50 GiB free of 79.10 GiB" in str(info.value)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None
    assert not opt.state
    shrinks = [
        r.getMessage() for r in caplog.records if "retrying the same batch" in r.getMessage()
    ]
    assert len(shrinks) == 3  # 8 -> 4 -> 2 -> 1: one line per change
    assert guard.metrics.ooms == 4 and guard.metrics.shrinks == 3
