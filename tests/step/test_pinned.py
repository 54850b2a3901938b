"""Pinned host memory: every registration is undone once, before its memory can be freed.

The CPU tests replace the CUDA runtime's register/unregister calls by a recorder that refuses a
range which overlaps one still registered, as the driver does; the GPU test applies the
offload techniques, drops the model without undo, and applies them again in one process (what
failed on the H200 with "resource already mapped").
"""

from __future__ import annotations

import gc

import pytest
import torch

import memfit
from memfit.step import pinned
from memfit.step.host_activations import ActivationOffloader
from memfit.step.pinned import PinnedHost
from memfit.techniques import Checkpoint, OffloadActivations, OffloadOptimizer


class _Runtime:
    """cudaHostRegister/Unregister's bookkeeping: ranges, overlaps refused, unknown pointers
    refused (error codes as the runtime's: 712 already registered, 713 not registered)."""

    def __init__(self) -> None:
        self.ranges: dict[int, int] = {}
        self.unregistered: list[int] = []

    def cudaHostRegister(self, pointer: int, nbytes: int, flags: int) -> int:  # noqa: N802
        if any(p < pointer + nbytes and pointer < p + n for p, n in self.ranges.items()):
            return 712
        self.ranges[pointer] = nbytes
        return 0

    def cudaHostUnregister(self, pointer: int) -> int:  # noqa: N802
        if self.ranges.pop(pointer, None) is None:
            return 713
        self.unregistered.append(pointer)
        return 0


@pytest.fixture
def runtime(monkeypatch) -> _Runtime:
    fake = _Runtime()
    cleared: list[int] = []
    monkeypatch.setattr(pinned, "_cudart", lambda: fake)
    monkeypatch.setattr(pinned, "_clear_last_error", lambda: cleared.append(1))
    fake.cleared = cleared  # type: ignore[attr-defined]
    return fake


def test_a_dropped_tensor_is_unregistered(runtime) -> None:
    host = PinnedHost()
    tensor = torch.empty(1 << 16, dtype=torch.uint8)
    pointer = tensor.data_ptr()
    assert host.pin(tensor) and runtime.ranges == {pointer: 1 << 16}
    del tensor
    gc.collect()
    assert runtime.ranges == {} and runtime.unregistered == [pointer]
    host.release()  # nothing left: no second unregister
    assert runtime.unregistered == [pointer] and not runtime.cleared


def test_release_unregisters_each_once(runtime) -> None:
    host = PinnedHost()
    tensors = [torch.empty(4096, dtype=torch.uint8) for _ in range(3)]
    assert all(host.pin(t) for t in tensors) and host.count == 3
    host.release()
    assert runtime.ranges == {} and len(runtime.unregistered) == 3 and host.count == 0
    del tensors
    gc.collect()
    assert len(runtime.unregistered) == 3


def test_a_refused_registration_is_cleared_and_not_unregistered(runtime) -> None:
    host = PinnedHost()
    tensor = torch.empty(4096, dtype=torch.uint8)
    assert host.pin(tensor)
    assert not host.pin(tensor[1024:])  # overlaps: refused, its error cleared at once
    assert runtime.cleared == [1] and host.count == 1
    host.release()
    assert len(runtime.unregistered) == 1


def test_an_offloader_dropped_without_undo_unregisters_its_buffers(runtime) -> None:
    """The H200 failure: a plan's activation buffers freed with the model, still registered."""
    offloader = ActivationOffloader()
    buffers = [offloader.pool.take(nbytes, pin=True) for nbytes in (1 << 20, 1 << 21, 1 << 20)]
    assert len(runtime.ranges) == 3
    for buffer in buffers:  # back in the pool, for the next step
        offloader.pool.give(buffer)
    del buffers, buffer
    gc.collect()
    assert len(runtime.ranges) == 3  # the pool keeps them registered
    del offloader
    gc.collect()
    assert runtime.ranges == {} and len(runtime.unregistered) == 3


@pytest.mark.gpu
def test_on_the_gpu_plans_apply_again_after_undo_and_after_a_dropped_model() -> None:
    from tests.apply.test_offload_optimizer import _batches, _llama, _optimizer

    layers = ("layers.*",)
    plan = [
        OffloadOptimizer(),
        Checkpoint(modules=layers),
        OffloadActivations(modules=layers, min_bytes=0),
    ]
    batch = {k: v.cuda() for k, v in _batches(1)[0].items()}
    for ending in ("undo", "drop", "undo"):
        model = _llama().cuda()
        step = memfit.apply(plan, model, _optimizer(torch.optim.AdamW, model),
                            precision="bf16-mixed")  # fmt: skip
        losses = [float(step(batch)) for _ in range(2)]
        assert all(loss == loss for loss in losses)  # finite, no CUDA error
        if ending == "undo":
            step.undo()
            assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters())
        del step, model
        gc.collect()
        torch.cuda.synchronize()
        torch.zeros(1 << 20, device="cuda").add_(1)  # a fresh allocation and kernel work
