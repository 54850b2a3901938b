"""The model and batch on fake CPU tensors: real shapes and dtypes, no memory.

A builder (zero-argument callable) is called under ``FakeTensorMode``, so even a 70B-parameter
model is built without allocating its weights. An existing ``nn.Module`` is mirrored by fake
tensors: for the duration of the trace (``FakeModel.swapped``, forward, backward and checkpoint
recomputation alike) its parameters and buffers are replaced by the fakes, and put back after,
whatever happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_map

from memfit.errors import UnsupportedModelError

__all__ = ["FakeModel", "prepare_model", "prepare_batch"]


@dataclass
class FakeModel:
    """The user's module with fake parameters and buffers.

    Attributes:
        module: the user's module (or the one the builder returned).
        params: trainable and frozen parameters by name (tied ones once), fake, leaf tensors.
        buffers: buffers by name, fake.
        swap: whether the forward must swap the fake tensors in (False when the module was
            built under fake mode and already holds them).
    """

    module: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    swap: bool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The module holds the fake tensors inside the context (no-op if it already does)."""
        if not self.swap:
            yield
            return
        with _reparametrize_module(
            self.module, {**self.params, **self.buffers}, tie_weights=True, strict=False
        ):
            yield

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]


def _fake_like(
    tensor: torch.Tensor, fake_mode: FakeTensorMode, dtype: torch.dtype | None = None
) -> torch.Tensor:
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    is_ours = isinstance(tensor, FakeTensor) and tensor.fake_mode is fake_mode
    if is_ours and tensor.device.type == "cpu" and tensor.dtype == target:
        return tensor
    with fake_mode:
        fake = torch.empty_strided(
            tuple(tensor.shape), tuple(tensor.stride()), dtype=target, device="cpu"
        )
    return fake


def prepare_model(
    model: nn.Module | Callable[[], nn.Module],
    fake_mode: FakeTensorMode,
    *,
    param_dtype: torch.dtype | None = None,
) -> FakeModel:
    """Build (under fake mode) or mirror the model with fake CPU tensors.

    Args:
        model: an ``nn.Module`` or a zero-argument builder returning one.
        fake_mode: the fake mode of the trace.
        param_dtype: cast floating parameters and buffers to this dtype (pure bf16 training).

    Raises:
        UnsupportedModelError: when the builder raises or returns something else.
    """
    module = model
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise UnsupportedModelError(
                f"model {model!r} is neither an nn.Module nor a zero-argument builder; pass "
                f"the module, or a function that builds it"
            )
        name = getattr(model, "__name__", repr(model))
        try:
            with fake_mode, torch.device("cpu"):
                module = model()
        except Exception as error:  # the user's code: report it, whatever it raised
            raise UnsupportedModelError(
                f"the builder {name}() raised {type(error).__name__}: {error}. memfit calls "
                f"it with fake tensors (no real memory) on the CPU device: build the model "
                f"without moving it to CUDA or loading weights from disk."
            ) from error
        if not isinstance(module, nn.Module):
            raise UnsupportedModelError(
                f"the builder {name}() returned {type(module).__name__}, not an nn.Module"
            )
    assert isinstance(module, nn.Module)
    params: dict[str, torch.Tensor] = {}
    swap = False
    for name, param in module.named_parameters():
        fake = _fake_like(
            param.detach() if not isinstance(param, FakeTensor) else param, fake_mode, param_dtype
        )
        if fake is not param:
            swap = True
            fake.requires_grad_(param.requires_grad)
        params[name] = fake
    buffers = {}
    for name, buffer in module.named_buffers():
        fake = _fake_like(buffer, fake_mode, param_dtype)
        swap = swap or fake is not buffer
        buffers[name] = fake
    return FakeModel(module, params, buffers, swap)


def prepare_batch(batch: Any, fake_mode: FakeTensorMode) -> Any:
    """The batch with every tensor replaced by a fake CPU tensor of the same shape and dtype."""
    return tree_map(
        lambda value: _fake_like(value, fake_mode) if isinstance(value, torch.Tensor) else value,
        batch,
    )
