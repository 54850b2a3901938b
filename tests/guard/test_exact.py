"""Fault injection: hundreds of steps with OOMs at random sizes give the fault-free weights.

OOMs in the optimizer step, which smaller micro-batches do not help: test_step_oom.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memfit.guard import OOMGuard

from .faults import Budget, make_data, make_model, random_limits

STEPS = 300


def _optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def _train(batches, *, opt_name: str, where: str, limits: dict[int, float], guarded: bool):
    budget = Budget(where=where)
    model = make_model(budget)
    opt = _optimizer(opt_name, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.7)

    def step_fn(batch):
        opt.zero_grad()
        loss = F.mse_loss(model(batch["x"]), batch["y"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # must see full-batch grads
        opt.step()
        sched.step()  # must run once per step
        return loss.detach()

    run = OOMGuard(step_fn, optimizer=opt, model=model, grow_after=5) if guarded else step_fn
    for i, batch in enumerate(batches):
        if i in limits and guarded:
            budget.limit = limits[i]
        run(batch)
    return model, opt, budget, run


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.slow
def test_guarded_run_matches_fault_free_run(opt_name: str, where: str) -> None:
    batches = make_data(STEPS)
    limits = random_limits(STEPS, seed={"forward": 1, "backward": 2}[where])
    limits[0] = 20  # the very first step (optimizer state not yet created) fails too
    ref, ref_opt, _, _ = _train(batches, opt_name=opt_name, where=where, limits={}, guarded=False)
    got, got_opt, budget, guard = _train(
        batches, opt_name=opt_name, where=where, limits=limits, guarded=True
    )
    assert budget.raised >= 10, "the fault injection should have fired many times"
    assert guard.metrics.ooms == budget.raised
    assert guard.metrics.steps == STEPS
    assert guard.metrics.shrinks > 0 and guard.metrics.grows > 0
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)
    assert got_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        for key, value in ref_opt.state[p].items():
            torch.testing.assert_close(got_opt.state[q][key], value, rtol=0, atol=1e-12)
