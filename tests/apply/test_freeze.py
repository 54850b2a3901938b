"""Freeze: named modules train no more; the rest trains as in a model frozen by hand."""

from __future__ import annotations

import pytest
import torch

import memfit
from memfit.errors import InvalidInputError
from memfit.step.undo import applied
from memfit.techniques import Exactness, Freeze, info
from tests.helpers import tiny_gpt2, token_batch


def _train(model, techniques) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = memfit.apply(techniques, model, optimizer, device_type="cpu")
    for _ in range(2):
        step(token_batch())
    return optimizer


def test_frozen_modules_get_no_gradient_and_no_state() -> None:
    by_hand = tiny_gpt2()
    for param in [*by_hand.wpe.parameters(), *by_hand.layers[0].parameters()]:
        param.requires_grad_(False)
    _train(by_hand, [])
    model = tiny_gpt2()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _train(model, [Freeze(("wpe", "layers.0"))])
    frozen = [*model.wpe.parameters(), *model.layers[0].parameters()]
    assert all(not p.requires_grad and p not in optimizer.state for p in frozen)
    for (name, a), b in zip(by_hand.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
        if name.startswith(("wpe", "layers.0.")):
            assert torch.equal(b, start[name]), name
    memfit.Plan(techniques=()).undo(model)
    assert all(p.requires_grad for p in model.parameters())


def test_undo_unfreezes_only_what_it_froze() -> None:
    model = tiny_gpt2()
    model.wpe.weight.requires_grad_(False)  # the user's own choice
    memfit.apply([Freeze(("wpe", "layers.*"))], model, None)
    assert not any(p.requires_grad for p in model.layers.parameters())
    memfit.Plan(techniques=()).undo(model)
    assert all(p.requires_grad for p in model.layers.parameters())
    assert not model.wpe.weight.requires_grad


@pytest.mark.parametrize(
    ("technique", "says"),
    [
        (Freeze(("layer.0",)), "matches no module.*close names: layers.0"),
        (Freeze(()), "needs a tuple of module name patterns"),
        (Freeze("wte"), "needs a tuple of module name patterns"),
        (Freeze(("drop",)), "no trainable parameters"),
    ],
)
def test_bad_patterns_are_refused(technique, says) -> None:
    model = tiny_gpt2()
    with pytest.raises(InvalidInputError, match=says):
        memfit.apply([technique], model, None)
    assert not applied(model) and all(p.requires_grad for p in model.parameters())


def test_it_changes_what_is_trained_so_the_user_asks_for_it() -> None:
    row = info(Freeze)
    assert row.exactness is Exactness.CHANGES_MATH and not row.planned
