"""PureBF16: bf16 weights, gradients and optimizer state; undone exactly before training."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import InvalidInputError, MemfitError
from memfit.step.undo import applied
from memfit.techniques import (
    Exactness,
    Freeze,
    MixedPrecision,
    PureBF16,
    default_allow,
    info,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.Linear(64, 8))


def _loss(output: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return output.float().pow(2).mean()


def _batch() -> torch.Tensor:
    return torch.randn(4, 32, generator=torch.Generator().manual_seed(1))


def _trained_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _loss(model(_batch()), None).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def test_weights_grads_and_state_in_bf16_the_same_tensors() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    step = memfit.apply([PureBF16()], model, optimizer, loss_fn=_loss, device_type="cpu")
    assert step.precision.name == "bf16" and step.precision.autocast_dtype is None
    assert [p.dtype for p in model.parameters()] == [torch.bfloat16] * len(params)
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    step(_batch().bfloat16())
    state = optimizer.state[params[0]]
    assert state["exp_avg"].dtype is state["exp_avg_sq"].dtype is torch.bfloat16
    # the update is plain AdamW's, computed in bf16: as torch.optim.AdamW on a bf16 model
    reference = copy.deepcopy(_model()).bfloat16()
    reference_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    _loss(reference(_batch().bfloat16()), None).backward()
    reference_opt.step()
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_undo_before_training_restores_model_and_optimizer_exactly() -> None:
    model = _model()
    optimizer = _trained_optimizer(model)  # float32 moments exist
    weights = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    memfit.apply([PureBF16()], model, optimizer, loss_fn=_loss, device_type="cpu")
    assert optimizer.state[model[0].weight]["exp_avg"].dtype is torch.bfloat16
    memfit.Plan(techniques=()).undo(model)
    assert all(
        torch.equal(weights[k], v) and v.dtype == weights[k].dtype
        for k, v in model.state_dict().items()
    )
    after = optimizer.state_dict()["state"]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(after[index][key], value) and after[index][key].dtype == value.dtype


def test_undo_after_training_keeps_the_training_in_the_original_dtypes() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = memfit.apply([PureBF16()], model, optimizer, loss_fn=_loss, device_type="cpu")
    step(_batch().bfloat16())
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    memfit.Plan(techniques=()).undo(model)
    for key, value in model.state_dict().items():
        assert value.dtype is torch.float32
        assert torch.equal(value, trained[key].float())
    assert optimizer.state[model[0].weight]["exp_avg"].dtype is torch.float32
    assert not torch.equal(model[0].weight, _model()[0].weight)


def test_a_failure_later_in_the_plan_leaves_the_model_as_it_was() -> None:
    model = _model()
    weights = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(InvalidInputError, match="matches no module"):
        memfit.apply([PureBF16(), Freeze(("encoder",))], model, optimizer)
    assert not applied(model)
    assert all(
        torch.equal(weights[k], v) and v.dtype is torch.float32
        for k, v in model.state_dict().items()
    )


@pytest.mark.parametrize(
    ("plan", "options", "says"),
    [
        ([MixedPrecision("bf16-mixed"), PureBF16()], {}, "would autocast them"),
        ([PureBF16()], {"precision": "fp16-mixed"}, "precision='fp16-mixed'"),
        ([PureBF16(), PureBF16()], {}, "PureBF16 twice"),
    ],
)
def test_conflicting_precisions_are_refused(plan, options, says) -> None:
    model = _model()
    with pytest.raises(InvalidInputError, match=says):
        memfit.apply(plan, model, torch.optim.AdamW(model.parameters()), **options)
    assert not applied(model) and model[0].weight.dtype is torch.float32


def test_stochastic_rounding_needs_adamw_and_torchao(monkeypatch) -> None:
    pytest.importorskip("torchao.optim")
    model = _model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    with pytest.raises(InvalidInputError, match="not Adam's L2 weight decay"):
        memfit.apply([PureBF16(stochastic_round=True)], model, adam)
    assert not applied(model) and model[0].weight.dtype is torch.float32
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(MemfitError, match=r'pip install "memfit\[torchao\]"'):
        memfit.apply([PureBF16(stochastic_round=True)], model, adam)
    assert not applied(model)


@pytest.mark.slow  # torchao compiles its step
def test_stochastic_rounding_steps_as_torchaos_adamw() -> None:
    torchao = pytest.importorskip("torchao.optim")
    batch = _batch().bfloat16()
    runs = []
    for ours in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(32, 32, bias=False)  # one shape: one compilation
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if ours:
            step = memfit.apply(
                [PureBF16(stochastic_round=True)],
                model,
                optimizer,
                loss_fn=_loss,
                device_type="cpu",
            )
        else:
            model.bfloat16()
            reference = torchao._AdamW(model.parameters(), lr=1e-3, bf16_stochastic_round=True)
        torch.manual_seed(2)  # the rounding draws random numbers
        for _ in range(2):
            if ours:
                step(batch)
            else:
                reference.zero_grad()
                _loss(model(batch), None).backward()
                reference.step()
        runs.append(model.weight.detach().clone())
        if ours:  # full-precision moments, in bf16
            assert optimizer.state[model.weight]["exp_avg"].dtype is torch.bfloat16
    assert torch.equal(runs[0], runs[1])


def test_it_changes_the_math_so_it_is_planned_only_when_allowed() -> None:
    row = info(PureBF16)
    assert row.exactness is Exactness.CHANGES_MATH
    assert "pure_bf16" not in default_allow()


@pytest.mark.parametrize(
    ("plan", "options"),
    [
        ([MixedPrecision("bf16")], {}),
        ([MixedPrecision("BF16")], {}),
        ([], {"precision": "bf16"}),
        (memfit.Plan(techniques=(), profile=None), {"precision": "bf16"}),
    ],
)
def test_pure_bf16_by_precision_alone_is_refused_before_anything_changes(plan, options) -> None:
    """Pure bf16 casts the weights, which is PureBF16's, allowed only by name: a precision
    alone must not run the float32 weights without autocast while the estimate said bf16."""
    model = _model()
    weights = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(InvalidInputError, match="PureBF16") as raised:
        memfit.apply(plan, model, optimizer, loss_fn=_loss, **options)
    assert "pure_bf16" in str(raised.value)
    assert not applied(model)
    assert all(
        torch.equal(weights[k], v) and v.dtype is torch.float32
        for k, v in model.state_dict().items()
    )


def test_the_estimate_refuses_mixed_precision_bf16_as_apply_does() -> None:
    with pytest.raises(InvalidInputError, match="PureBF16"):
        memfit.estimate(_model(), _batch(), plan=[MixedPrecision("bf16")], loss_fn=_loss)


def test_pure_bf16_precision_runs_on_weights_the_user_cast() -> None:
    """A model the user cast to bf16 runs in "bf16" as given: nothing is cast by memfit."""
    model = _model().bfloat16()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = memfit.apply([], model, optimizer, loss_fn=_loss, precision="bf16", device_type="cpu")
    step(_batch().bfloat16())
    reference = _model().bfloat16()
    reference_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    _loss(reference(_batch().bfloat16()), None).backward()
    reference_opt.step()
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        assert a.dtype is torch.bfloat16 and torch.equal(a, b)


def test_mixed_precision_bf16_with_pure_bf16_named_casts_the_weights() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = memfit.apply([MixedPrecision("bf16"), PureBF16()], model, optimizer, loss_fn=_loss)
    assert step.precision.name == "bf16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_train_step_refuses_pure_bf16_over_float32_weights() -> None:
    with pytest.raises(InvalidInputError, match=r"'0.weight', torch.float32"):
        memfit.TrainStep(_model(), None, loss_fn=_loss, precision="bf16")
