"""The PureBF16 applier: weights, gradients and optimizer state in bfloat16, no autocast.

The model's floating parameters and buffers are cast in place (``param.data``, as
``nn.Module.to`` does), so the module objects and the optimizer's parameters stay the same
tensors; gradients then come out in bf16 and optimizers create their state in bf16. The step
runs in the ``"bf16"`` precision (no autocast). Existing optimizer state (moments shaped like
their parameter) is cast when the optimizer is known.

Undo casts everything back to its own dtype. To restore exactly what was there, the original
values are kept in host memory until the optimizer's first step (a step post-hook drops them):
undo before training, or a failure while the rest of the plan is applied, puts back the very
tensors' values; undo after training casts the trained bf16 values back (the training is kept).

With ``stochastic_round=True`` AdamW steps through torchao's ``_AdamW``
(``bf16_stochastic_round``: the float32 update is rounded to bf16 up or down at random, in
proportion to the distance, so small updates survive on average), through the same delegation
as ``LowBitOptimizer`` (``memfit.apply.low_bit_optimizer``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import PureBF16

from .low_bit_optimizer import check_adam, torchao_optim, use_torchao

__all__ = ["apply_pure_bf16", "cast_state"]


class _Kept:
    """Host copies of the values cast, until the optimizer's first step (``drop``)."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple[torch.Tensor, int, int]] = {}  # id -> (copy, ptr, version)
        self.dtypes: dict[int, torch.dtype] = {}  # id of a parameter cast -> its dtype

    def keep(self, tensor: torch.Tensor, key: int) -> None:
        """Keep ``tensor``'s value under ``key``; call ``mark`` once it is cast."""
        self.copies[key] = (tensor.detach().to("cpu", copy=True), 0, -1)

    def mark(self, key: int, cast: torch.Tensor) -> None:
        copy = self.copies[key][0]
        self.copies[key] = (copy, cast.data_ptr(), cast._version)

    def restored(self, key: int, cast: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The original value if ``cast`` is untouched since it was cast, else ``cast`` in
        ``dtype`` (trained values are kept)."""
        kept = self.copies.get(key)
        if kept is not None and (cast.data_ptr(), cast._version) == kept[1:]:
            return kept[0].to(cast.device)
        return cast.detach().to(dtype)

    def drop(self, *args: Any) -> None:
        self.copies.clear()


@register_applier(PureBF16)
def apply_pure_bf16(model: nn.Module, technique: PureBF16, context: ApplyContext) -> UndoFn:
    """Cast the model to bf16 in place; the optimizer's change casts its state.

    Known limitations:
        * Changes the math (weights, gradients and updates rounded to bf16): used only when
          allowed by name. Without stochastic rounding, updates smaller than half a bf16 step
          of a weight are lost.
        * Until the optimizer's first step (or undo) the original weights take their size in
          host memory; the cast tensors are referenced until undo (the model's own).
        * Integer and complex tensors are left alone; so are tensors that are not the
          module's (a loss's class weights held elsewhere).

    Raises:
        InvalidInputError: the plan has PureBF16 twice, or with a MixedPrecision other than
            ``"bf16"``.
        MemfitError: ``stochastic_round=True`` and torchao is not installed.
    """
    if context.precision not in (None, "bf16"):
        raise InvalidInputError(
            f"PureBF16 keeps the weights in bf16 without autocast; the plan's MixedPrecision "
            f"{context.precision!r} would autocast them: keep one of the two"
        )
    if context.pure_bf16:
        raise InvalidInputError("the plan has PureBF16 twice; keep one")
    if technique.stochastic_round:
        torchao_optim("PureBF16(stochastic_round=True)")
    kept = _Kept()
    undo_cast = _cast_module(model, kept)
    context.pure_bf16 = True
    changes = [functools.partial(cast_state, kept=kept)]
    if technique.stochastic_round:
        context.stochastic_round = True
        changes.append(functools.partial(_rounding, context=context))
    context.optimizer_changes.extend(changes)

    def undo() -> None:
        for change in changes:
            context.optimizer_changes.remove(change)
        context.pure_bf16 = context.stochastic_round = False
        undo_cast()

    return undo


def _cast_module(model: nn.Module, kept: _Kept) -> UndoFn:
    cast: list[tuple[torch.Tensor, torch.dtype]] = []
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or not tensor.is_floating_point() or tensor.dtype is torch.bfloat16:
            continue
        seen.add(id(tensor))
        kept.keep(tensor, id(tensor))
        kept.dtypes[id(tensor)] = tensor.dtype
        cast.append((tensor, tensor.dtype))
        tensor.data = tensor.data.to(torch.bfloat16)
        kept.mark(id(tensor), tensor)
        if tensor.grad is not None:
            tensor.grad = tensor.grad.to(torch.bfloat16)

    def undo() -> None:
        for tensor, dtype in cast:
            tensor.data = kept.restored(id(tensor), tensor, dtype)
            if tensor.grad is not None:
                tensor.grad = tensor.grad.to(dtype)
        kept.drop()

    return undo


def cast_state(optimizer: torch.optim.Optimizer, *, kept: _Kept) -> UndoFn:
    """Cast ``optimizer``'s state tensors shaped like the parameters PureBF16 cast (moments,
    momentum buffers; not step counts) to bf16; the returned callable casts back every such
    tensor, those created in bf16 since included.

    The originals are kept in host memory until the optimizer's first step, which then drops
    the model's kept weights too.
    """
    cast: dict[tuple[int, str], int] = {}  # (parameter id, name) -> key of the original
    for param, state in optimizer.state.items():
        for name, value in list(state.items()):
            if id(param) in kept.dtypes and _is_moment(value, param):
                if value.dtype is not torch.bfloat16:
                    cast[(id(param), name)] = id(value)
                    kept.keep(value, id(value))
                    state[name] = value.to(torch.bfloat16)
                    kept.mark(id(value), state[name])
    hook = optimizer.register_step_post_hook(kept.drop)

    def undo() -> None:
        hook.remove()
        for param, state in optimizer.state.items():
            dtype = kept.dtypes.get(id(param))
            for name, value in list(state.items()):
                if dtype is not None and _is_moment(value, param) and value.dtype != dtype:
                    key = cast.get((id(param), name), -1)
                    state[name] = kept.restored(key, value, dtype)

    return undo


def _is_moment(value: Any, param: torch.Tensor) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and not is_traceable_wrapper_subclass(value)
        and value.is_floating_point()
        and value.shape == param.shape
    )


def _rounding(optimizer: torch.optim.Optimizer, *, context: ApplyContext) -> UndoFn:
    """Stochastic rounding through torchao (with or without low-bit state)."""
    check_adam(optimizer, "PureBF16(stochastic_round=True)")
    return use_torchao(optimizer, context=context)
