"""The pieces of a training step shared by memfit's TrainStep on real and fake tensors: the
default loss, the checks on the loss, and the optimizer update (with or without loss scaling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from memfit.errors import UnsupportedModelError
from memfit.step.overhead import note as note_overhead

__all__ = [
    "default_loss",
    "own_loss",
    "loss_is_stand_in",
    "MEAN_OUTPUT_LOSS",
    "compute_loss",
    "optimizer_update",
    "clip_gradients",
    "LossFn",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # the label cross-entropy skips (PyTorch's and Hugging Face's default)

LossFn = Callable[[Any, Any], torch.Tensor]


MEAN_OUTPUT_LOSS = (
    "the model's output holds no loss and no loss_fn was given, so the step's loss is the mean "
    "of its first output tensor (output.float().mean()); pass loss_fn=lambda output, batch: ... "
    "(--loss-fn FILE.py:FN) for your own: its memory (a cross-entropy's float32 "
    "log-probabilities, for one) is not in this step"
)
"""What a predicted step without ``loss_fn`` says when the model computes no loss of its own."""


def own_loss(output: Any) -> torch.Tensor | None:
    """The loss the model computed: ``output.loss`` or ``output["loss"]``; None without one."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss


def loss_is_stand_in(output: Any) -> bool:
    """Whether ``default_loss`` of ``output`` is the mean of a tensor that is not a loss: no
    ``loss`` in it and a first tensor of more than one element (a scalar first, as in Hugging
    Face's ``return_dict=False`` ``(loss, logits)``, is the model's loss)."""
    first = _first_tensor(output)
    return own_loss(output) is None and not (isinstance(first, torch.Tensor) and first.numel() == 1)


def _first_tensor(output: Any) -> Any:
    """The first tensor of ``output`` (its ``logits`` where it has them), or what stands there."""
    first = output
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, Mapping) and first:
        first = next(iter(first.values()))
    return getattr(first, "logits", first)


def default_loss(output: Any, batch: Any) -> torch.Tensor:
    """``output.loss`` (or ``output["loss"]``) when the model computes one, else the mean of
    its first output tensor (a stand-in where that is not a loss: ``MEAN_OUTPUT_LOSS``)."""
    loss = own_loss(output)
    if loss is not None:
        return loss
    logits = _first_tensor(output)
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


def optimizer_update(
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    grad_scale: torch.Tensor | None,
    *,
    clip_grad_norm: float | None = None,
) -> None:
    """``optimizer.step()``, through a GradScaler (real) or its op-by-op emulation (fake).

    Args:
        clip_grad_norm: first scale the gradients of the optimizer's parameters so that their
            global L2 norm is at most this (``torch.nn.utils.clip_grad_norm_``), after
            unscaling them when a loss scale is in force, as PyTorch's AMP recipe does.
    """
    note_overhead("optimizer_step")  # the step-time model prices torch.optim's Python
    if scaler is not None:
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            clip_gradients(optimizer, clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    if grad_scale is not None:  # GradScaler.unscale_ + step + update, without its .item()
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        found_inf = torch.zeros((), device=grad_scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, grad_scale.reciprocal())
        if clip_grad_norm is not None:
            clip_gradients(optimizer, clip_grad_norm)
        optimizer.step()
        growth_tracker = torch.zeros((), dtype=torch.int32, device=grad_scale.device)
        torch._amp_update_scale_(grad_scale, growth_tracker, found_inf, 2.0, 0.5, 2000)
        return
    if clip_grad_norm is not None:
        clip_gradients(optimizer, clip_grad_norm)
    optimizer.step()


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``optimizer``'s parameters to a global L2 norm of ``max_norm``.

    Returns:
        The norm before clipping, as ``torch.nn.utils.clip_grad_norm_`` returns it.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
