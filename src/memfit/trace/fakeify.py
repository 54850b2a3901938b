"""The model and batch on fake CPU tensors: real shapes and dtypes, no memory.

A builder (zero-argument callable) is called under ``FakeTensorMode``, so even a 70B-parameter
model is built without allocating its weights. A builder that reads tensor values to decide its
shapes (torchvision's RegNet computes its widths with ``torch.arange(...).tolist()``) cannot be
built that way, since fake tensors have no values: it is built again with real tensors, each
parameter made fake as it is registered (``real_values=True``), so that such computations see
real numbers while no weight is ever filled. An existing ``nn.Module`` is mirrored by fake
tensors: for the duration of the trace (``FakeModel.swapped``, forward, backward and checkpoint
recomputation alike) its parameters and buffers are replaced by the fakes, and put back after,
whatever happens.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    FakeTensor,
    FakeTensorMode,
)
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_map

from memfit.errors import UnsupportedModelError

__all__ = ["FakeModel", "prepare_model", "prepare_batch", "evaluating"]


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


@contextlib.contextmanager
def _parameters_made_fake(fake_mode: FakeTensorMode) -> Iterator[None]:
    """Every parameter a module registers becomes a fake tensor of its shape (other tensors
    stay real): ``Module.__setattr__`` registers parameters through ``register_parameter``."""
    register = nn.Module.register_parameter
    allowed = fake_mode.allow_non_fake_inputs

    def register_fake(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not isinstance(param, FakeTensor):
            fake = _fake_like(param.detach(), fake_mode)
            param = nn.Parameter(fake, requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = register_fake  # type: ignore[method-assign]
    fake_mode.allow_non_fake_inputs = True  # real tensors meet fake parameters while building
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        fake_mode.allow_non_fake_inputs = allowed


def prepare_model(
    model: nn.Module | Callable[[], nn.Module],
    fake_mode: FakeTensorMode,
    *,
    param_dtype: torch.dtype | None = None,
    real_values: bool = False,
) -> FakeModel:
    """Build (under fake mode) or mirror the model with fake CPU tensors.

    Args:
        model: an ``nn.Module`` or a zero-argument builder returning one.
        fake_mode: the fake mode of the trace.
        param_dtype: cast floating parameters and buffers to this dtype (pure bf16 training):
            a built model is cast with ``module.to(param_dtype)`` where it was built (its
            float32 weights freed, as on the GPU); a given module is mirrored in that dtype.
        real_values: call the builder on real tensors, making each parameter fake as it is
            registered (for builders that read tensor values).

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
        building = _parameters_made_fake(fake_mode) if real_values else fake_mode
        try:
            with building, torch.device("cpu"), warnings.catch_warnings():
                # deepcopy of a fake parameter asks for its data pointer (nn.TransformerEncoder
                # clones its layer): torch warns; nothing is wrong with the user's model
                warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")
                module = model()
                if param_dtype is not None and isinstance(module, nn.Module):
                    # as a pure-bf16 run casts the built model: the float32 weights are freed
                    module = module.to(param_dtype)
        except DataDependentOutputException as error:
            raise UnsupportedModelError(
                f"the builder {name}() reads the value of a tensor that becomes a parameter "
                f"({error}); memfit builds models with fake parameters, which have no values. "
                f"Pass the built nn.Module instead of its builder"
            ) from error
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
    if module is not model:
        _adopt_copies(module, fake_mode)
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
    if swap and module is not model:
        # a model memfit built holds fakes of another fake mode (deepcopy under fake mode
        # gives its copies a mode of their own: nn.TransformerEncoder's cloned layers): the
        # model is ours, so it takes the new fakes for good and the old ones are freed, as on
        # the GPU, where the built model's weights exist once
        params = _install(module, params, buffers)
        swap = False
    return FakeModel(module, params, buffers, swap)


def _adopt_copies(module: nn.Module, fake_mode: FakeTensorMode) -> None:
    """Make the fakes of a model memfit built this mode's own, in place.

    ``copy.deepcopy`` of a fake tensor copies its mode with it (nn.TransformerEncoder clones
    its layer that way), so the copies belong to another mode; they are fakes of the same
    device all the same, so they are relabelled rather than made again: a new fake of each
    would record every weight allocated a second time while the first still lives, which the
    GPU never does (it built nn.TransformerEncoder's six 12 MiB layers once: 108 MiB of
    segments for the weights in the H200 recording, 174 MiB when memfit made them again).
    """
    for tensor in (*module.parameters(), *module.buffers()):
        if isinstance(tensor, FakeTensor) and tensor.fake_mode is not fake_mode:
            tensor.fake_mode = fake_mode


def _install(
    module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Put the fakes into ``module`` (tied parameters stay tied); the installed parameters."""
    replacement: dict[int, torch.Tensor] = {}
    for name, param in module.named_parameters():
        fake = params[name]
        replacement[id(param)] = nn.Parameter(fake, requires_grad=fake.requires_grad)
    for name, buffer in module.named_buffers():
        replacement[id(buffer)] = buffers[name]
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in list(table.items()):
                if tensor is not None and id(tensor) in replacement:
                    table[name] = replacement[id(tensor)]  # type: ignore[assignment]
    return dict(module.named_parameters())


def prepare_batch(batch: Any, fake_mode: FakeTensorMode) -> Any:
    """The batch with every tensor replaced by a fake CPU tensor of the same shape and dtype."""
    return tree_map(
        lambda value: _fake_like(value, fake_mode) if isinstance(value, torch.Tensor) else value,
        batch,
    )


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """The module and its children in ``eval()`` inside the context; their modes put back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
