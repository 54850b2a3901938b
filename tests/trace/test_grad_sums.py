"""Gradients that fan in are summed as the autograd engine sums them without a dispatch mode.

The oracle is PyTorch's own engine on real CPU tensors with no mode active: whether the leaf's
gradient reuses the memory of one of the two gradients summed (in place) or is a new tensor.
The recorder on fake tensors must record a new allocation for the sum exactly when the engine
makes one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.profile import Phase
from memfit.trace.recorder import MemoryRecorder


def _fan_in(
    held: list[torch.Tensor] | None, make: Any, real: bool
) -> tuple[torch.Tensor, list[int]]:
    """``w`` used in two products: two gradients reach its AccumulateGrad and are summed.
    ``held``: hooks keep a view of both gradients (their memory is shared), so the engine may
    sum into neither."""
    w = make(16, 8).requires_grad_()
    x = make(16, 8)
    a = x * w
    b = (x * 2) * w
    summands: list[int] = []  # on real tensors: the summed gradients' addresses
    for product in (a, b) if real else ():
        product.grad_fn.register_hook(lambda inputs, outputs: summands.append(inputs[1].data_ptr()))
    for product in (a, b) if held is not None else ():
        product.grad_fn.register_hook(lambda inputs, outputs: held.append(inputs[1].view(-1)))
    loss = a.sum() + b.sum()
    loss.backward()
    return w, summands


@pytest.mark.parametrize("kept", [False, True], ids=["summed-in-place", "both-kept"])
def test_a_sum_allocates_as_the_engine_does(kept: bool) -> None:
    # the engine, no mode: in place unless both gradients are referenced elsewhere
    held: list[torch.Tensor] | None = [] if kept else None
    w, summands = _fan_in(held, torch.randn, real=True)
    engine_in_place = w.grad.data_ptr() in summands
    assert engine_in_place is not kept

    recorder = MemoryRecorder()
    held = [] if kept else None
    with FakeTensorMode(), torch.device("cpu"), recorder:
        recorder.phase = Phase.BACKWARD
        _fan_in(held, torch.empty, real=False)
    made = recorder.trace.allocations.values()
    sums = [a for a in made if a.op == "add.Tensor" and a.shape == (16, 8)]
    assert len(sums) == (0 if engine_in_place else 1)


def test_sums_outside_backward_are_not_touched() -> None:
    """A forward ``a + b`` of two temporaries allocates its result (grad mode is on)."""
    recorder = MemoryRecorder()
    with FakeTensorMode(), torch.device("cpu"), recorder:
        x = torch.empty(16, 8, requires_grad=True)
        total = x * 2 + x * 3
        with torch.no_grad(), contextlib.nullcontext():
            plain = torch.empty(16, 8) + torch.empty(16, 8)  # no autograd node running
    ops = [a.op for a in recorder.trace.allocations.values()]
    assert ops.count("add.Tensor") == 2
    assert total.shape == plain.shape


def _layouts(make: Any, real: bool) -> list[tuple[int, ...]]:
    """A gradient that is the sum of a transposed one (arriving first) and a contiguous one:
    the strides of the sum, seen by a hook on the tensor summed for."""
    seen: list[tuple[int, ...]] = []
    w = make(16, 8).requires_grad_()
    h = w * 1
    h.register_hook(lambda grad: seen.append(grad.stride()))
    loss = (h * 3).sum() + (h.t() * 2).sum()
    loss.backward()
    return seen


def test_a_sum_keeps_the_layout_the_engine_keeps() -> None:
    """The engine sums into the first gradient when it is dense in any order of its
    dimensions, so the sum keeps its layout, which decides whether later nodes copy it."""
    engine = _layouts(torch.randn, real=True)
    with FakeTensorMode(), torch.device("cpu"), MemoryRecorder():
        traced = _layouts(torch.empty, real=False)
    assert traced == engine
