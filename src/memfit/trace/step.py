"""One training step, written once for prediction (fake tensors) and measurement (a real GPU).

The step keeps only the loss: the model's output is released as soon as the loss is computed
(as Hugging Face's Trainer does), backward runs outside autocast, and gradients are set to None
after the optimizer step. ``mark`` is called at each phase boundary so that the caller can
record where forward, backward and the optimizer step begin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from memfit.errors import UnsupportedModelError
from memfit.trace.inputs import call_model
from memfit.trace.precision import Precision

__all__ = ["default_loss", "compute_loss", "training_step", "LossFn"]

LossFn = Callable[[Any, Any], torch.Tensor]


def default_loss(output: Any, batch: Any) -> torch.Tensor:
    """``output.loss`` (or ``output["loss"]``) when the model computes one, else the mean output."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is not None:
        return loss
    first = output
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, Mapping) and first:
        first = next(iter(first.values()))
    logits = getattr(first, "logits", first)
    if not isinstance(logits, torch.Tensor):
        raise UnsupportedModelError(
            f"cannot find a loss in the model's output ({type(output).__name__}); pass "
            f"loss_fn=lambda output, batch: ... returning a scalar tensor"
        )
    return logits.float().mean()


def compute_loss(loss_fn: LossFn | None, output: Any, batch: Any) -> torch.Tensor:
    """The scalar loss, checked.

    Raises:
        UnsupportedModelError: when the loss is not a floating scalar tensor.
    """
    try:
        loss = (loss_fn or default_loss)(output, batch)
    except UnsupportedModelError:
        raise
    except Exception as error:  # the user's loss function: report it, whatever it raised
        raise UnsupportedModelError(
            f"the loss function raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(loss, torch.Tensor):
        raise UnsupportedModelError(
            f"the loss is a {type(loss).__name__}, not a tensor; loss_fn must return a scalar "
            f"tensor computed from the output"
        )
    if loss.numel() != 1 or not loss.is_floating_point():
        shape = list(loss.shape)
        raise UnsupportedModelError(
            f"the loss must be a floating-point scalar, got {str(loss.dtype)} of shape {shape}; "
            f"reduce it (e.g. .mean()) in loss_fn"
        )
    return loss


def training_step(
    model: Callable[..., Any],
    batch: Any,
    *,
    loss_fn: LossFn | None,
    optimizer: torch.optim.Optimizer | None,
    precision: Precision,
    forward: Callable[[Any, Any], Any] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    mark: Callable[[str], None] = lambda phase: None,
    grad_scale: torch.Tensor | None = None,
    scaler: Any = None,
    optimizer_steps: int = 1,
) -> torch.Tensor:
    """Forward (with loss) under autocast, backward, optimizer step(s), gradients to None.

    Args:
        forward: ``(model, batch) -> output`` for models not called as ``call_model`` does.
        grad_scale: fp16 loss scale for prediction on fake tensors (scaling emulated op by op).
        scaler: a real ``torch.amp.GradScaler`` for measurement.
        optimizer_steps: 2 lets prediction record the first (state-creating) and a steady step.
    """
    mark("forward")
    with autocast():
        output = forward(model, batch) if forward is not None else call_model(model, batch)
        loss = compute_loss(loss_fn, output, batch)
        del output
    mark("backward")
    if scaler is not None:
        scaler.scale(loss).backward()
    elif grad_scale is not None:
        (loss * grad_scale).backward()
    else:
        loss.backward()
    if optimizer is not None:
        for index in range(optimizer_steps):
            mark(f"optimizer{index}")
            _optimizer_step(optimizer, scaler, grad_scale)
        mark("zero_grad")
        optimizer.zero_grad(set_to_none=True)
    mark("end")
    return loss.detach()


def _optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: Any, grad_scale: torch.Tensor | None
) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        return
    if grad_scale is not None:  # GradScaler.unscale_ + step + update, without its .item()
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        found_inf = torch.zeros((), device=grad_scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, grad_scale.reciprocal())
        optimizer.step()
        growth_tracker = torch.zeros((), dtype=torch.int32, device=grad_scale.device)
        torch._amp_update_scale_(grad_scale, growth_tracker, found_inf, 2.0, 0.5, 2000)
        return
    optimizer.step()
