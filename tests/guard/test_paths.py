"""The guard's other paths: the MicroBatchStep protocol, GradScaler, weights, failures mid-step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memfit.errors import MemfitError
from memfit.guard import OOMGuard, StateRestoreError

from .faults import MESSAGE, Budget, make_data, make_model, random_limits

STEPS = 120


def _close(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


class ToyStep:
    """A MicroBatchStep: clipping and the scheduler live in optimizer_step."""

    def __init__(self, budget: Budget) -> None:
        self.model = make_model(budget)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)
        self.calls = 0

    def forward_backward(self, batch, *, loss_scale: float) -> torch.Tensor:
        loss = F.mse_loss(self.model(batch["x"]), batch["y"])
        (loss * loss_scale).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.calls += 1

    def step(self, batch) -> torch.Tensor:  # the unguarded reference
        loss = self.forward_backward(batch, loss_scale=1.0)
        self.optimizer_step()
        return loss


@pytest.mark.slow
def test_protocol_step_matches_and_returns_full_batch_loss() -> None:
    batches = make_data(STEPS, seed=5)
    limits = random_limits(STEPS, seed=5, every=5)
    ref = ToyStep(Budget())
    ref_losses = [ref.step(b) for b in batches]
    budget = Budget()
    toy = ToyStep(budget)
    guard = OOMGuard(toy, grow_after=3)
    losses = []
    for i, batch in enumerate(batches):
        budget.limit = limits.get(i, budget.limit)
        losses.append(guard(batch))
    assert budget.raised > 5 and toy.calls == STEPS
    _close(ref.model, toy.model)
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_grad_scaler_state_is_restored_and_run_is_exact() -> None:
    batches = make_data(STEPS, seed=6)
    limits = random_limits(STEPS, seed=6, every=4)

    def train(guarded: bool):
        budget = Budget()
        model = make_model(budget)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)

        def step_fn(batch):
            loss = F.mse_loss(model(batch["x"]), batch["y"])
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()

        guard = OOMGuard(step_fn, optimizer=opt, model=model, grad_scaler=scaler, grow_after=3)
        run = guard if guarded else step_fn
        for i, batch in enumerate(batches):
            budget.limit = limits.get(i, budget.limit) if guarded else budget.limit
            run(batch)
        return model, scaler, budget

    ref, ref_scaler, _ = train(False)
    got, got_scaler, budget = train(True)
    assert budget.raised > 5
    _close(ref, got)
    assert got_scaler.get_scale() == ref_scaler.get_scale()
    assert got_scaler._growth_tracker.item() == ref_scaler._growth_tracker.item()


def test_token_weighted_mean_loss_is_exact_with_weight_fn() -> None:
    """A loss that is a mean over labelled tokens needs weights by token count, not samples."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 6, generator=gen, dtype=torch.float64)
    mask = torch.rand(8, 5, generator=gen) < 0.6
    mask[:, 0] = True

    def run(budget_limit: float, by_tokens: bool = True):
        budget = Budget(limit=budget_limit)
        model = make_model(budget)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step_fn(batch):
            h = torch.tanh(model.l1(batch["x"]))  # per-token loss, mean over labelled tokens
            model(batch["x"])  # the budget check
            per_token = model.l2(h).pow(2).sum(-1)
            loss = per_token[batch["mask"]].mean()
            loss.backward()
            opt.step()
            opt.zero_grad()

        weight_fn = (lambda b: b["mask"].sum()) if by_tokens else None  # noqa: E731
        OOMGuard(step_fn, optimizer=opt, model=model, weight_fn=weight_fn)({"x": x, "mask": mask})
        return model, budget

    ref, _ = run(float("inf"))
    got, budget = run(15)
    assert budget.raised >= 1
    _close(ref, got)
    by_samples, _ = run(15, by_tokens=False)  # weights n_i / N are wrong for this loss
    assert not torch.allclose(by_samples.l1.weight, ref.l1.weight, rtol=0, atol=1e-6)


def test_oom_after_the_optimizer_step_is_reraised_not_retried() -> None:
    budget = Budget()
    model = make_model(budget)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []

    def step_fn(batch):
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()
        steps.append(1)
        raise torch.OutOfMemoryError(MESSAGE)  # e.g. in logging code after the step

    guard = OOMGuard(step_fn, optimizer=opt, model=model)
    with pytest.raises(torch.OutOfMemoryError):
        guard(make_data(1)[0])
    assert len(steps) == 1  # applied once, not twice


class HalfwayAdamW(torch.optim.AdamW):
    """Writes to some state and one parameter, then runs out of memory (when told to)."""

    fail = False

    def step(self, closure=None):
        if self.fail:
            self.fail = False
            params = self.param_groups[0]["params"]
            with torch.no_grad():
                self.state[params[0]]["exp_avg"].mul_(0.5)
                params[0].add_(0.01)
            self.state[params[1]]["new_key"] = torch.zeros(3)
            raise torch.OutOfMemoryError(MESSAGE)
        return super().step(closure)


@pytest.mark.parametrize("copy", ["none", "cpu"])
def test_failure_in_the_middle_of_optimizer_step(copy: str) -> None:
    batches = make_data(6, seed=7)

    def train(fail_at: int | None):
        model = make_model(Budget())
        opt = HalfwayAdamW(model.parameters(), lr=0.01)

        def step_fn(batch):
            opt.zero_grad()
            F.mse_loss(model(batch["x"]), batch["y"]).backward()
            opt.step()

        guard = OOMGuard(step_fn, optimizer=opt, model=model, optimizer_copy=copy)
        for i, batch in enumerate(batches):
            opt.fail = i == fail_at
            guard(batch)
        return model, opt, guard

    ref, _, _ = train(None)
    if copy == "none":
        with pytest.raises(StateRestoreError, match="optimizer_copy='cpu'"):
            train(3)
        return
    got, opt, guard = train(3)
    _close(ref, got)
    assert guard.metrics.ooms == guard.metrics.step_retries == 1  # the step, not the batch
    assert all("new_key" not in s for s in opt.state.values())


def test_step_fn_with_two_backwards_is_refused_before_the_update() -> None:
    budget = Budget(limit=40)
    model = make_model(budget)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        out = model(batch["x"])
        F.mse_loss(out, batch["y"]).backward(retain_graph=True)
        out.pow(2).mean().backward()
        opt.step()

    before = [p.detach().clone() for p in model.parameters()]
    batch = make_data(1, sizes=(16,), lengths=(4,))[0]
    with pytest.raises(MemfitError, match="backward more than once"):
        OOMGuard(step_fn, optimizer=opt, model=model)(batch)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None


def test_gradients_cleared_by_hand_between_micro_batches_are_detected() -> None:
    budget = Budget(limit=40)
    model = make_model(budget)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(batch):
        for p in model.parameters():
            p.grad = None
        F.mse_loss(model(batch["x"]), batch["y"]).backward()
        opt.step()

    batch = make_data(1, sizes=(16,), lengths=(4,))[0]
    with pytest.raises(MemfitError, match="cleared or replaced the gradient"):
        OOMGuard(step_fn, optimizer=opt, model=model)(batch)


class _CheckpointedNet(torch.nn.Module):
    """The first gradient arrives inside a reentrant checkpoint's nested backward."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.inner = make_model(budget)
        self.outer = torch.nn.Linear(6, 6).double()
        self.inner.l2.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.outer(x)
        return torch.utils.checkpoint.checkpoint(self.inner, h, use_reentrant=True)


def test_reentrant_checkpoint_is_split_exactly() -> None:
    batches = make_data(30, seed=8)

    def train(limit: float):
        budget = Budget(limit=limit)
        torch.manual_seed(0)
        model = _CheckpointedNet(budget)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

        def step_fn(batch):
            opt.zero_grad()
            F.mse_loss(model(batch["x"]), batch["y"]).backward()
            opt.step()

        guard = OOMGuard(step_fn, optimizer=opt, model=model, grow_after=2)
        for batch in batches:
            guard(batch)
        return model, budget

    ref, _ = train(float("inf"))
    got, budget = train(30)
    assert budget.raised > 3
    _close(ref, got)
