"""What the pre-step snapshot costs and restores; allocator thrash."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memfit.guard import OOMGuard

from .faults import Budget, FaultyNet, make_data, make_model


def _grad_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_none_and_zeroed_gradients_cost_nothing() -> None:
    model = make_model(Budget())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # zeros, seen by the guard

    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    batches = make_data(3)
    guard(batches[0])
    assert guard.metrics.snapshot_bytes == 0  # grads were None
    guard(batches[1])
    assert guard.metrics.snapshot_bytes == 0  # grads were zero, untouched since
    for p in model.parameters():
        p.grad.add_(1.0)  # changed outside the guard: must be copied now
    guard(batches[2])
    assert guard.metrics.snapshot_bytes == _grad_bytes(model)


def test_gradients_accumulated_over_calls_are_restored_exactly() -> None:
    """step_fn only accumulates; the loop steps every second call (user-side accumulation)."""
    batches = make_data(40, seed=3)

    def train(limit: float):
        budget = Budget(limit=limit)
        model = make_model(budget)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)

        def step_fn(batch):
            (F.mse_loss(model(batch["x"]), batch["y"]) / 2).backward()

        guard = OOMGuard(step_fn, optimizer=opt, model=model)
        for i, batch in enumerate(batches):
            guard(batch)
            if i % 2:
                opt.step()
                opt.zero_grad()
        return model, budget

    ref, _ = train(float("inf"))
    got, budget = train(30)
    assert budget.raised > 0
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


class NormNet(FaultyNet):
    def __init__(self, budget: Budget) -> None:
        super().__init__(budget)
        self.norm = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def test_buffers_changed_by_a_failed_forward_are_restored() -> None:
    budget = Budget(limit=24, where="backward")  # fails after the forward updated the stats
    model = NormNet(budget).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()
        opt.zero_grad()

    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    guard(make_data(1, sizes=(16,), lengths=(4,))[0])
    # 16 x 4 fails, then 8 x 4 fails, then 4 micro-batches of 4 run: 4 updates, not 4 + 2 + 1
    assert model.norm.num_batches_tracked.item() == 4
    assert guard.metrics.num_micro_batches == 4
    mutable = guard._snapshot._mutable_buffers
    assert mutable is not None and {id(b) for b in mutable} == {id(b) for b in model.norm.buffers()}


def test_allocator_thrash_shrinks_the_next_micro_batch(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model(Budget())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()
        opt.zero_grad()

    guard = OOMGuard(step_fn, optimizer=opt, model=model, thrash_steps=2)
    retries = iter([0, 3, 7, 7, 7])
    guard._recovery.read_alloc_retries = lambda: next(retries)
    batches = make_data(5, sizes=(16,), lengths=(4,))
    with caplog.at_level(logging.WARNING, logger="memfit.guard"):
        sizes = []
        for batch in batches:
            guard(batch)
            sizes.append(guard.metrics.micro_batch_size)
    assert sizes == [16, 16, 16, 8, 8]
    assert guard.metrics.thrash_events == 1 and guard.metrics.ooms == 0
    assert any(
        "allocator thrash" in r.getMessage() and "16 -> 8" in r.getMessage() for r in caplog.records
    )
