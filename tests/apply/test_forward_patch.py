"""The one way appliers replace a module's forward, and undo it."""

from __future__ import annotations

import copy
import functools
import gc

import pytest
import torch
from torch import nn

from memfit.apply.forward_patch import replace_forward
from memfit.errors import MemfitError


def _doubled(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 2 * type(module).forward(module, x)


def test_runs_the_function_and_undo_gives_the_class_forward_back() -> None:
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    plain = layer(x)
    undo = replace_forward(layer, functools.partial(_doubled), "replaced")
    assert torch.equal(layer(x), 2 * plain)
    assert layer.forward.__name__ == "forward"  # torch.compile reads it
    undo()
    assert "forward" not in layer.__dict__
    assert torch.equal(layer(x), plain)


def test_undo_restores_another_librarys_instance_forward() -> None:
    layer = nn.Linear(3, 3)
    theirs = layer.forward  # a bound method, as accelerate's hooks install
    layer.forward = theirs  # type: ignore[method-assign]
    undo = replace_forward(layer, functools.partial(_doubled), "replaced")
    undo()
    assert layer.__dict__["forward"] is theirs


def test_a_forward_replaced_since_is_left_alone_with_the_message() -> None:
    layer = nn.Linear(3, 3)
    undo = replace_forward(layer, functools.partial(_doubled), "the forward of 'fc' changed")
    later = layer.forward
    layer.forward = lambda x: x  # type: ignore[method-assign]
    with pytest.raises(MemfitError, match="the forward of 'fc' changed"):
        undo()
    assert layer.forward is not later and layer.forward(1) == 1


def test_a_copy_runs_its_own_weights_and_a_dropped_module_needs_no_undo() -> None:
    layer = nn.Linear(3, 3)
    undo = replace_forward(layer, functools.partial(_doubled), "replaced")
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.zero_()
    assert torch.equal(twin(torch.ones(1, 3)), torch.zeros(1, 3))
    del layer
    gc.collect()
    undo()  # nothing left to restore
