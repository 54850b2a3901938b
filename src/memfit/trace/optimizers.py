"""Optimizers by name, built as PyTorch builds them on a CUDA device.

``torch.optim`` picks its implementation from the parameters' device: on CUDA, Adam, AdamW and
SGD default to the ``foreach`` kernels, which hold a temporary as large as all parameters of a
dtype (Adam's ``exp_avg_sq.sqrt()``); on the CPU they default to a per-parameter loop, whose
temporaries are one parameter at a time. ``cuda_optimizer_defaults()`` makes the traced CPU run
choose as CUDA would, for optimizers named here and for the user's own factories alike.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from memfit.errors import InvalidInputError
from memfit.profile import Category
from memfit.trace.recorder import MemoryRecorder

__all__ = [
    "OPTIMIZERS",
    "make_optimizer",
    "cuda_optimizer_defaults",
    "optimizer_label",
    "watch_gradients",
    "state_tensors",
    "host_tensors",
    "check_optimizer",
]

OptimizerFactory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=1e-4, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-4),
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-4, fused=True),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}


def _no_optimizer(optimizer: object) -> bool:
    """None, or the name "none" (what the command line passes)."""
    return optimizer is None or (isinstance(optimizer, str) and optimizer.lower() == "none")


def optimizer_label(optimizer: str | OptimizerFactory | None) -> str | None:
    if _no_optimizer(optimizer):
        return None
    if isinstance(optimizer, str):
        return optimizer
    return getattr(optimizer, "__name__", "custom")


def check_optimizer(optimizer: object) -> None:
    """Raise InvalidInputError unless ``optimizer`` is a known name, None, or a factory."""
    if _no_optimizer(optimizer) or callable(optimizer):
        return
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise InvalidInputError(
                f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}, none (no "
                f"optimizer step), or pass a factory: lambda params: torch.optim.X(params, ...)"
            )
        return
    raise InvalidInputError(
        f"optimizer {optimizer!r} must be a name ({', '.join(OPTIMIZERS)}), None, or a factory "
        f"taking the parameters: lambda params: torch.optim.X(params, ...)"
    )


def make_optimizer(
    optimizer: str | OptimizerFactory | None, params: Sequence[torch.Tensor]
) -> torch.optim.Optimizer | None:
    """Build the optimizer over ``params``.

    Args:
        optimizer: a name from ``OPTIMIZERS``, a factory ``params -> Optimizer``, or None or
            "none" (forward and backward only... or forward only when there is nothing to train).

    Raises:
        InvalidInputError: for an unknown name or a factory that fails.
    """
    if _no_optimizer(optimizer):
        return None
    if isinstance(optimizer, str):
        factory = OPTIMIZERS.get(optimizer.lower())
        if factory is None:
            raise InvalidInputError(
                f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}, None (no "
                f"optimizer step), or pass a factory: lambda params: torch.optim.X(params, ...)"
            )
    elif callable(optimizer):
        factory = optimizer
    else:
        raise InvalidInputError(
            f"optimizer {optimizer!r} must be a name ({', '.join(OPTIMIZERS)}), None, or a "
            f"factory taking the parameters"
        )
    if not params:
        raise InvalidInputError(
            "the model has no trainable parameters, so there is nothing to optimize; pass "
            "optimizer=None to estimate forward and backward only"
        )
    try:
        built = factory(list(params))
    except Exception as error:  # the user's factory: report it, whatever it raised
        raise InvalidInputError(
            f"the optimizer factory raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(built, torch.optim.Optimizer):
        raise InvalidInputError(
            f"the optimizer factory returned {type(built).__name__}, not a torch.optim.Optimizer"
        )
    return built


def _cuda_default(params: list[Any], differentiable: bool, use_fused: bool = False) -> Any:
    # torch.optim.optimizer._default_to_fused_or_foreach, as it decides for CUDA tensors
    if torch.jit.is_scripting() or differentiable:
        return False, False
    fused = use_fused and all(p is None or torch.is_floating_point(p) for p in params)
    return fused, not fused


@contextlib.contextmanager
def cuda_optimizer_defaults() -> Iterator[None]:
    """Within the context, torch.optim chooses foreach/fused as it would for CUDA tensors."""
    patched: list[tuple[Any, Any]] = []
    for name in (
        "optimizer",
        "adam",
        "adamw",
        "sgd",
        "adamax",
        "adagrad",
        "adadelta",
        "asgd",
        "nadam",
        "radam",
        "rmsprop",
        "rprop",
    ):
        try:
            module = importlib.import_module(f"torch.optim.{name}")
        except ImportError:
            continue
        original = getattr(module, "_default_to_fused_or_foreach", None)
        if original is not None:
            patched.append((module, original))
            module._default_to_fused_or_foreach = _cuda_default  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in patched:
            module._default_to_fused_or_foreach = original  # type: ignore[attr-defined]


def watch_gradients(
    params: Mapping[str, torch.Tensor], recorder: MemoryRecorder
) -> Callable[[], None]:
    """Count each parameter's gradient as a gradient as soon as autograd accumulates it.

    The plain step's gradients are all alive at the optimizer step, where the tracer marks
    them; an optimizer that runs in backward frees each one inside backward, so it must be
    marked there: hooks registered before the update's own run first. Returns what removes
    them.
    """

    def mark(param: torch.Tensor) -> None:
        recorder.recategorize([param.grad], Category.GRAD)

    handles = [
        param.register_post_accumulate_grad_hook(mark)
        for param in params.values()
        if param.requires_grad
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors holding ``optimizer``'s state, the inner tensors of tensor subclasses (a
    torchao quantized moment is its codes, scales and code map) in their place."""
    found: list[torch.Tensor] = []
    pending = [
        t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)
    ]
    while pending:
        tensor = pending.pop()
        if is_traceable_wrapper_subclass(tensor):
            names, _ = tensor.__tensor_flatten__()
            pending.extend(getattr(tensor, name) for name in names)
        else:
            found.append(tensor)
    return found


def host_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's tensors that live in host memory for CUDA parameters.

    Adam, AdamW and others keep each ``state["step"]`` in a CPU tensor unless ``fused`` or
    ``capturable`` is set (``_init_group`` in ``torch/optim/adam.py``); so do torchao's
    low-bit optimizers, which also keep each group's learning rate as a CPU tensor
    (``_AdamBase.add_param_group`` in ``torchao/optim/adam.py``).
    """
    found = []
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        if isinstance(group.get("lr"), torch.Tensor):
            found.append(group["lr"])
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                found.append(step)
    return found
