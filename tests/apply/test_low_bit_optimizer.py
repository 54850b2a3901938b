"""LowBitOptimizer: the user's Adam/AdamW stepping through torchao's low-bit optimizer."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import InvalidInputError, MemfitError
from memfit.step.undo import applied
from memfit.techniques import (
    Checkpoint,
    Exactness,
    FusedOptimizer,
    LowBitOptimizer,
    OptimizerInBackward,
    default_allow,
    info,
    parse_allow,
)

torchao = pytest.importorskip("torchao.optim")


class Net(nn.Module):
    """One weight torchao quantizes (16,384 elements), one it keeps plain (a bias)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(128, 128), nn.Linear(128, 128)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.tanh(self.layers[0](x)))


def _groups(model: Net) -> list[dict]:
    first, second = model.layers
    return [
        {"params": [first.weight, first.bias]},
        {"params": [second.weight, second.bias], "lr": 3e-3, "weight_decay": 0.0},
    ]


def _loss(output: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return output.pow(2).mean()


def _batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 128, generator=generator) for _ in range(n)]


def _torchao_run(cls_name: str, schedule: bool) -> Net:
    model = Net()
    optimizer = getattr(torchao, cls_name)(_groups(model), lr=1e-2, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5) if schedule else None
    for batch in _batches():
        optimizer.zero_grad()
        _loss(model(batch), batch).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return model


@pytest.mark.slow  # torchao compiles its step (about 5 s per kind on 2 CPU cores)
@pytest.mark.parametrize(
    ("kind", "user", "expected"),
    [
        ("8bit", torch.optim.AdamW, "AdamW8bit"),
        ("4bit", torch.optim.AdamW, "AdamW4bit"),
        ("fp8", torch.optim.AdamW, "AdamWFp8"),
        ("8bit", torch.optim.Adam, "Adam8bit"),
    ],
)
def test_steps_as_torchao_with_the_users_hyperparameters(kind, user, expected) -> None:
    schedule = kind == "8bit"
    reference = _torchao_run(expected, schedule)
    model = Net()
    optimizer = user(_groups(model), lr=1e-2, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5) if schedule else None
    step = memfit.apply([LowBitOptimizer(kind)], model, optimizer, loss_fn=_loss, device_type="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "scheduler before optimizer" warning
        for batch in _batches():
            step(batch)
            if scheduler is not None:
                scheduler.step()
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    state = optimizer.state[model.layers[0].weight]
    assert type(state["exp_avg"]).__name__.startswith("OptimState")
    assert type(optimizer.state[model.layers[0].bias]["exp_avg"]) is torch.Tensor
    if schedule:
        assert optimizer.param_groups[1]["lr"].item() == pytest.approx(3e-3 / 8)
    memfit.Plan(techniques=()).undo(model)
    if schedule:  # the scheduler's wrapper is back
        assert optimizer.step._wrapped_by_lr_sched
    else:
        assert "step" not in optimizer.__dict__
    assert type(optimizer.state[model.layers[0].weight]["exp_avg"]) is torch.Tensor
    assert isinstance(optimizer.param_groups[0]["lr"], float)
    step = memfit.apply([], model, optimizer, loss_fn=_loss, device_type="cpu")
    step(_batches(1)[0])  # torch's AdamW steps again from the dequantized moments


@pytest.mark.slow
def test_in_backward_steps_as_the_low_bit_step() -> None:
    runs = []
    for techniques in ([LowBitOptimizer()], [LowBitOptimizer(), OptimizerInBackward()]):
        model = Net()
        optimizer = torch.optim.AdamW(_groups(model), lr=1e-2)
        step = memfit.apply(techniques, model, optimizer, loss_fn=_loss, device_type="cpu")
        for batch in _batches():
            step(batch)
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_existing_moments_are_quantized_at_the_next_step() -> None:
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    memfit.apply([], model, optimizer, loss_fn=_loss, device_type="cpu")(_batches(1)[0])
    plain = optimizer.state[model.layers[0].weight]["exp_avg"].clone()
    saved = copy.deepcopy(optimizer.state_dict())
    step = memfit.apply([LowBitOptimizer()], model, optimizer, loss_fn=_loss, device_type="cpu")
    assert type(optimizer.state[model.layers[0].weight]["exp_avg"]) is torch.Tensor  # not yet
    step(_batches(2)[1])
    moment = optimizer.state[model.layers[0].weight]["exp_avg"]
    assert type(moment).__name__ == "OptimState8bit"
    assert float(optimizer.state[model.layers[0].weight]["step"]) == 2.0
    # one AdamW step later the moment moved by (1 - beta1) of a gradient: same scale
    assert moment.dequantize().norm() == pytest.approx(plain.norm(), rel=0.5)
    # resuming: a float32 state dict loaded after apply is quantized at the next step too
    resumed = Net()
    reference = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    reference.load_state_dict(saved)
    step = memfit.apply([LowBitOptimizer()], resumed, reference, loss_fn=_loss, device_type="cpu")
    reference.load_state_dict(saved)
    step(_batches(2)[1])
    assert type(reference.state[resumed.layers[0].weight]["exp_avg"]).__name__ == "OptimState8bit"


def test_apply_then_undo_restores_the_optimizer_exactly() -> None:
    model = Net()
    optimizer = torch.optim.AdamW(_groups(model), lr=1e-2)
    memfit.apply([], model, optimizer, loss_fn=_loss, device_type="cpu")(_batches(1)[0])
    before = copy.deepcopy(optimizer.state_dict())
    weights = copy.deepcopy(model.state_dict())
    memfit.apply([LowBitOptimizer("4bit")], model, optimizer, device_type="cpu")
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    memfit.Plan(techniques=()).undo(model)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, values in before["state"].items():
        for key, value in values.items():
            assert torch.equal(after["state"][index][key], value), (index, key)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert "step" not in optimizer.__dict__


def test_torchao_missing_names_the_fix(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.optim", None)  # import raises ImportError
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(MemfitError, match=r'pip install "memfit\[torchao\]"'):
        memfit.apply([Checkpoint(("layers.*",)), LowBitOptimizer()], model, optimizer)
    assert not applied(model) and "step" not in optimizer.__dict__


class _BuiltForAnotherTorch:
    """An import finder failing as torchao 0.18 does beside torch 2.6, while it imports."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchao.optim":
            raise AttributeError(
                "module 'torch.utils._pytree' has no attribute 'register_constant'"
            )
        return None


def test_torchao_built_for_another_torch_names_both_versions(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "torchao.optim", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BuiltForAnotherTorch(), *sys.meta_path])
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(MemfitError, match=r"fails to import beside torch") as raised:
        memfit.apply([Checkpoint(("layers.*",)), LowBitOptimizer()], model, optimizer)
    assert torch.__version__ in str(raised.value) and "register_constant" in str(raised.value)
    assert not applied(model) and "step" not in optimizer.__dict__


@pytest.mark.parametrize(
    ("make", "technique", "says"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), LowBitOptimizer(), "not a SGD"),
        (lambda p: torch.optim.AdamW(p, maximize=True), LowBitOptimizer(), "maximize=True"),
        (lambda p: torch.optim.AdamW(p), LowBitOptimizer("2bit"), "kind must be one of"),
        (lambda p: torch.optim.AdamW(p), LowBitOptimizer(block_size=0), "positive integer"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(make, technique, says) -> None:
    model = Net()
    optimizer = make(model.parameters())
    groups = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    )
    with pytest.raises(InvalidInputError, match=says):
        memfit.apply([technique], model, optimizer)
    assert not applied(model) and "step" not in optimizer.__dict__
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == groups


def test_it_changes_the_math_so_it_is_planned_only_when_allowed() -> None:
    row = info(LowBitOptimizer)
    assert row.exactness is Exactness.CHANGES_MATH and row.planned
    assert "low_bit_optimizer" not in default_allow()
    assert "low_bit_optimizer" in parse_allow("checkpoint,low_bit_optimizer")
    with pytest.raises(InvalidInputError, match="cannot be combined with fused_optimizer"):
        memfit.apply([LowBitOptimizer(), FusedOptimizer()], Net(), None)
