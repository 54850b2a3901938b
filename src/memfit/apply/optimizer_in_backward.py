"""The OptimizerInBackward applier: each parameter updated as soon as its gradient is complete.

``Tensor.register_post_accumulate_grad_hook`` runs a hook once autograd has accumulated a
leaf's gradient for this backward pass (a tied weight's contributions are summed first). The
hook runs the user's optimizer on that one parameter and sets its gradient to None, so the full
set of gradients never exists at once and the update's temporaries are one parameter's.

The optimizer is the user's object, stepped through its own ``step()`` (so its hooks, an LR
scheduler's step counting and memfit's ``LowBitOptimizer`` delegate all run): for the duration
of one call its ``param_groups`` list holds a single group, a copy of the parameter's group
(same hyperparameters, same tensors) holding that parameter alone. The state stays in
``optimizer.state`` under the parameter, as the plain step keeps it, so ``state_dict()``,
checkpoints and undo see the same optimizer.

Per-parameter optimizers only: Adam, AdamW and SGD update each parameter from its own gradient
and state, so stepping them one parameter at a time is the same computation (``foreach`` and
``fused`` kernels apply the same elementwise update to a list of one). Optimizers that read
every gradient (LBFGS, or any optimizer type not listed) are refused.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext, set_once
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import OptimizerInBackward

__all__ = ["apply_optimizer_in_backward", "check_in_backward", "step_in_backward"]

PER_PARAMETER = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
"""Optimizers whose update of a parameter reads only that parameter's gradient and state."""


@register_applier(OptimizerInBackward, check_optimizer=lambda opt: check_in_backward(opt))
def apply_optimizer_in_backward(
    model: nn.Module, technique: OptimizerInBackward, context: ApplyContext
) -> UndoFn:
    """Mark the step as updating in backward and add ``step_in_backward`` to the optimizer's
    changes (run where the optimizer is known: ``memfit.apply``, or the tracer's own).

    Known limitations:
        * Gradient accumulation (``MicroBatch``, ``accumulate``), clipping by global norm and
          fp16 loss scaling need every gradient before the update: ``TrainStep`` refuses them
          (``memfit.technique_rules``).
        * The optimizer's step hooks and an LR scheduler's step counting run once per
          parameter. An LR scheduler still steps once per ``scheduler.step()``.
        * Calling ``backward`` twice before an update (your own accumulation) updates twice.

    Raises:
        InvalidInputError: the plan has OptimizerInBackward twice, or with MicroBatch.
    """
    if context.micro_batches is not None and context.micro_batches > 1:
        raise InvalidInputError(
            f"OptimizerInBackward cannot run with MicroBatch(n={context.micro_batches}): "
            f"accumulating gradients over micro-batches needs them all before the update; "
            f"keep one of the two"
        )
    clear = set_once(context, "optimizer_in_backward", "OptimizerInBackward")
    context.optimizer_changes.append(step_in_backward)

    def undo() -> None:
        context.optimizer_changes.remove(step_in_backward)
        clear()

    return undo


def check_in_backward(optimizer: object) -> None:
    """Raise unless ``step_in_backward(optimizer)`` can run (nothing is changed).

    Raises:
        InvalidInputError: an optimizer that is not per-parameter (the message lists the
            ones that are), or one that is ``differentiable``.
    """
    fix = "plan without it (allow leaving out 'optimizer_in_backward')"
    if type(optimizer) not in PER_PARAMETER:
        names = ", ".join(f"torch.optim.{cls.__name__}" for cls in PER_PARAMETER)
        raise InvalidInputError(
            f"OptimizerInBackward updates one parameter at a time, which is the same update "
            f"only for per-parameter optimizers ({names}), not a {type(optimizer).__name__}; "
            f"{fix}, or use one of those"
        )
    assert isinstance(optimizer, torch.optim.Optimizer)
    if any(group.get("differentiable") for group in optimizer.param_groups):
        raise InvalidInputError(
            f"OptimizerInBackward: the optimizer is differentiable=True (its update is part of "
            f"a graph), which the update inside backward cannot be; {fix}"
        )


def step_in_backward(optimizer: torch.optim.Optimizer) -> UndoFn:
    """Update each of ``optimizer``'s parameters in backward; returns what removes the hooks.

    Raises:
        InvalidInputError: see ``check_in_backward``; nothing is changed then.
    """
    check_in_backward(optimizer)
    handles = []
    for index, group in enumerate(optimizer.param_groups):
        for param in group["params"]:
            if param.requires_grad:
                # the optimizer held weakly: the hook lives in C++, where the garbage collector
                # cannot see the cycle parameter -> hook -> optimizer -> parameter, so a strong
                # reference would keep a dropped model's parameters and state alive for good
                hook = functools.partial(_update, weakref.ref(optimizer), index)
                handles.append(param.register_post_accumulate_grad_hook(hook))

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


def _update(
    optimizer_ref: weakref.ref[torch.optim.Optimizer], index: int, param: torch.Tensor
) -> None:
    """The post-accumulate-grad hook: step ``param`` alone, then free its gradient (nothing
    once the optimizer is gone)."""
    optimizer = optimizer_ref()
    if optimizer is None:
        return
    with _only(optimizer, index, param):
        optimizer.step()
    param.grad = None


@contextlib.contextmanager
def _only(optimizer: torch.optim.Optimizer, index: int, param: torch.Tensor) -> Iterator[None]:
    """``optimizer.param_groups`` holds one group with ``param`` alone inside the context.

    The list is changed in place (not replaced): a delegate sharing it (``LowBitOptimizer``)
    sees the same single group.
    """
    groups = optimizer.param_groups
    saved = list(groups)
    single: dict[str, Any] = dict(saved[index])
    single["params"] = [param]
    groups[:] = [single]
    try:
        yield
    finally:
        groups[:] = saved
