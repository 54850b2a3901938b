"""The recorder answers a fake tensor's ``.device`` query without recording it as an operator."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from memfit.trace.recorder import MemoryRecorder


def test_device_queries_pass_through_and_operators_are_recorded() -> None:
    seen: list[str] = []
    recorder = MemoryRecorder(on_op=lambda func, args, kwargs, out: seen.append(func.__name__))
    with FakeTensorMode(), torch.device("cpu"), recorder:
        weight = torch.empty(4, 4, requires_grad=True)
        loss = (weight * 2).sum()
        loss.backward()  # the autograd engine asks every gradient's device
        devices = {weight.device.type, weight.grad.device.type}
    assert devices == {"cpu"}
    assert "device.default" not in seen  # answered, not an operator of the step
    assert not any(op.startswith("device") for op in recorder.recent_ops)
    assert {"mul.Tensor", "sum.default"} <= set(seen)
    assert recorder.trace.allocations  # the weight, the product, the loss, the gradient


class _Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.queries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.queries += func is torch.ops.prim.device.default
        return func(*args, **(kwargs or {}))


def test_a_mode_below_the_recorder_still_sees_the_queries() -> None:
    """The recorder answers a query itself only where FakeTensorMode alone would answer it."""
    between = _Counting()
    with FakeTensorMode(), torch.device("cpu"), between, MemoryRecorder():
        weight = torch.empty(4, 4, requires_grad=True)
        (weight * 2).sum().backward()
        assert weight.grad.device.type == "cpu"
    assert between.queries > 0
