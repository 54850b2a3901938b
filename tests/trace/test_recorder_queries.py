"""The recorder lets a fake tensor's ``.device`` query through without recording it."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

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
