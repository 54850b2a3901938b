"""The FusedOptimizer applier: Adam and AdamW step with PyTorch's fused kernel.

``torch.optim.Adam``/``AdamW`` read ``fused`` and ``foreach`` from each parameter group at every
step, so switching an existing optimizer is a matter of those two flags, plus where the step
counts live: the fused kernel wants each ``state["step"]`` as a float32 tensor on the
parameter's device, the other implementations keep it on the host (as
``Optimizer.load_state_dict`` arranges for either). ``use_fused`` checks what PyTorch's
constructor checks for ``fused=True`` and raises before changing anything; its undo puts the
flags and the step counts back.

The technique's applier changes no model: it adds ``use_fused`` to the context's optimizer
changes, run where the optimizer is known (``memfit.apply`` on the user's, the tracer on the
one it builds). Without an optimizer (forward and backward only) there is nothing to switch.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import FusedOptimizer

__all__ = ["apply_fused_optimizer", "check_fusable", "use_fused"]

_FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def _devices() -> list[str]:
    """Device types with fused optimizer kernels, as PyTorch's constructor checks them."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper: should it move, the kernels of torch 2.6 remain
        return ["cuda", "cpu", "xpu", "mps"]
    return list(_get_fused_kernels_supported_devices())


@register_applier(FusedOptimizer, check_optimizer=lambda optimizer: check_fusable(optimizer))
def apply_fused_optimizer(
    model: nn.Module, technique: FusedOptimizer, context: ApplyContext
) -> UndoFn:
    """Add ``use_fused`` to the context's optimizer changes.

    Raises:
        InvalidInputError: the plan has FusedOptimizer twice.
    """
    if use_fused in context.optimizer_changes:
        raise InvalidInputError("the plan has FusedOptimizer twice; keep one")
    context.optimizer_changes.append(use_fused)
    return functools.partial(context.optimizer_changes.remove, use_fused)


def check_fusable(optimizer: object) -> None:
    """Raise unless ``use_fused(optimizer)`` can switch it (nothing is changed).

    Raises:
        InvalidInputError: an optimizer other than Adam/AdamW, a differentiable one, or
            parameters that are not floating point or live on a device without the kernel.
    """
    fix = "plan without it (allow leaving out 'fused_optimizer'), or use torch.optim.Adam/AdamW"
    if type(optimizer) not in _FUSABLE:
        raise InvalidInputError(
            f"FusedOptimizer switches torch.optim.Adam and AdamW to fused=True, not a "
            f"{type(optimizer).__name__}; {fix}"
        )
    assert isinstance(optimizer, torch.optim.Optimizer)
    for group in optimizer.param_groups:
        if group.get("differentiable"):
            raise InvalidInputError(
                f"FusedOptimizer: the optimizer is differentiable=True, which PyTorch's fused "
                f"kernel does not support; {fix}"
            )
        devices = _devices()
        for param in group["params"]:
            if not torch.is_floating_point(param) or param.device.type not in devices:
                raise InvalidInputError(
                    f"FusedOptimizer: a parameter of dtype {param.dtype} on {param.device} has no "
                    f"fused kernel (floating point on {', '.join(devices)} only); {fix}"
                )


def use_fused(optimizer: torch.optim.Optimizer) -> UndoFn:
    """Make ``optimizer`` step with the fused kernel; the returned callable switches it back.

    Raises:
        InvalidInputError: see ``check_fusable``; the optimizer is then unchanged.
    """
    check_fusable(optimizer)
    before = [(group.get("fused"), group.get("foreach")) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        for param in group["params"]:
            _move_step(optimizer, param, device=param.device)
    return functools.partial(_restore, optimizer, before)


def _restore(optimizer: torch.optim.Optimizer, before: list[tuple[object, object]]) -> None:
    for group, (fused, foreach) in zip(optimizer.param_groups, before, strict=True):
        group["fused"], group["foreach"] = fused, foreach
        for param in group["params"]:
            if not (fused or group.get("capturable")):
                _move_step(optimizer, param, device=torch.device("cpu"))


def _move_step(optimizer: torch.optim.Optimizer, param: torch.Tensor, device: torch.device) -> None:
    state = optimizer.state.get(param)
    step = state.get("step") if state else None
    if isinstance(step, torch.Tensor) and step.device != device:
        state["step"] = step.to(device=device, dtype=torch.float32)  # type: ignore[index]
