"""OptimizerInBackward: the plain step's updates, one parameter at a time inside backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import memfit
from memfit.apply.optimizer_in_backward import step_in_backward
from memfit.errors import InvalidInputError
from memfit.step.undo import applied
from memfit.techniques import Checkpoint, MicroBatch, MixedPrecision, OptimizerInBackward
from tests.helpers import tiny_gpt2, token_batch

OPTIMIZERS = {
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad-foreach": lambda groups: torch.optim.AdamW(
        groups, lr=1e-2, amsgrad=True, foreach=True
    ),
    "adam-l2-fused": lambda groups: torch.optim.Adam(
        groups, lr=1e-2, weight_decay=0.01, fused=True
    ),
    "sgd-nesterov": lambda groups: torch.optim.SGD(
        groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
}


def _groups(model: nn.Module) -> list[dict]:
    """Two parameter groups with their own learning rates (the second without decay)."""
    named = list(model.named_parameters())
    decayed = [p for n, p in named if p.dim() > 1]
    other = [p for n, p in named if p.dim() <= 1]
    return [{"params": decayed}, {"params": other, "lr": 3e-3, "weight_decay": 0.0}]


def _run(make, techniques, steps: int = 3):
    model = tiny_gpt2()
    optimizer = make(_groups(model))
    step = memfit.apply(list(techniques), model, optimizer, device_type="cpu")
    batch = token_batch()
    losses = [step(batch) for _ in range(steps)]
    return model, optimizer, losses


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_updates_are_identical_to_the_plain_step(name: str) -> None:
    make = OPTIMIZERS[name]
    plain, plain_opt, plain_losses = _run(make, [])
    model, optimizer, losses = _run(make, [OptimizerInBackward()])
    # float64, tied embeddings (one gradient from two uses), two parameter groups
    assert torch.equal(torch.stack(losses), torch.stack(plain_losses))
    for (key, a), (_, b) in zip(
        plain.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
    state, expected = optimizer.state_dict()["state"], plain_opt.state_dict()["state"]
    assert state.keys() == expected.keys()
    for index, values in expected.items():
        for key, value in values.items():
            assert torch.equal(state[index][key], value), (index, key)
    assert all(p.grad is None for p in model.parameters())  # freed in backward


def test_with_checkpointed_blocks_identical_too() -> None:
    make = OPTIMIZERS["adamw"]
    plain, _, _ = _run(make, [Checkpoint(("layers.*",))])
    model, _, _ = _run(make, [Checkpoint(("layers.*",)), OptimizerInBackward()])
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_each_gradient_is_freed_before_the_next_is_made() -> None:
    model = nn.Sequential(*(nn.Linear(16, 16, bias=False) for _ in range(4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    alive: list[int] = []

    def count(param: torch.Tensor) -> None:  # registered first: runs before the update
        alive.append(sum(p.grad is not None for p in model.parameters()))

    handles = [p.register_post_accumulate_grad_hook(count) for p in model.parameters()]
    undo = step_in_backward(optimizer)
    model(torch.randn(2, 16)).sum().backward()
    assert alive == [1, 1, 1, 1]  # each gradient alone, the ones before it already freed
    assert all(p.grad is None for p in model.parameters())
    for handle in handles:
        handle.remove()
    undo()
    model(torch.randn(2, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # hooks gone: plain backward


def test_undo_restores_model_and_optimizer() -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    groups = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    )
    memfit.apply([OptimizerInBackward()], model, optimizer, device_type="cpu")
    memfit.Plan(techniques=(OptimizerInBackward(),)).undo(model)
    assert not applied(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == groups
    loss = model(**token_batch()).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # no update in backward


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (dict(clip_grad_norm=1.0), "optimizer_in_backward cannot run with clip_grad_norm=1.0"),
        (dict(accumulate=4), "optimizer_in_backward cannot run with accumulate=4"),
        (dict(precision="fp16-mixed"), "fp16-mixed precision"),
    ],
)
def test_refused_with_what_needs_every_gradient(options, says) -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidInputError, match=says) as error:
        memfit.apply([OptimizerInBackward()], model, optimizer, **options)
    assert "Drop optimizer_in_backward from the plan" in str(error.value)
    assert not applied(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_refused_with_micro_batches_and_in_a_plan_with_fp16() -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(InvalidInputError, match="cannot be combined with"):
        memfit.apply([MicroBatch(2), OptimizerInBackward()], model, optimizer)
    with pytest.raises(InvalidInputError, match="fp16-mixed"):
        memfit.apply([MixedPrecision("fp16-mixed"), OptimizerInBackward()], model, optimizer)
    assert not applied(model)


def test_refuses_optimizers_that_read_every_gradient() -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.LBFGS(model.parameters())
    with pytest.raises(InvalidInputError, match="per-parameter optimizers.*not a LBFGS"):
        memfit.apply([Checkpoint(("layers.*",)), OptimizerInBackward()], model, optimizer)
    assert not applied(model)
