"""Training precisions by name: what autocast does, what dtype the weights have, loss scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memfit.errors import InvalidInputError

__all__ = ["Precision", "PRECISIONS", "check_weights_for"]


@dataclass(frozen=True)
class Precision:
    """One of ``fp32``, ``bf16-mixed``, ``fp16-mixed``, ``bf16`` (pure).

    Attributes:
        autocast_dtype: the dtype autocast computes in, or None without autocast.
        param_dtype: the dtype of weights, gradients and optimizer state (None: as built).
        grad_scaler: whether loss scaling (``torch.amp.GradScaler``) runs.
    """

    name: str
    autocast_dtype: torch.dtype | None
    param_dtype: torch.dtype | None
    grad_scaler: bool

    @classmethod
    def parse(cls, name: str | Precision) -> Precision:
        if isinstance(name, Precision):
            return name
        key = str(name).lower().replace("_", "-")
        if key not in PRECISIONS:
            raise InvalidInputError(
                f'unknown precision {name!r}; allowed: {", ".join(PRECISIONS)} ("-mixed" keeps '
                f'fp32 weights and runs autocast; plain "bf16" casts the weights)'
            )
        return PRECISIONS[key]


PRECISIONS = {
    "fp32": Precision("fp32", None, None, False),
    "bf16-mixed": Precision("bf16-mixed", torch.bfloat16, None, False),
    "fp16-mixed": Precision("fp16-mixed", torch.float16, None, True),
    "bf16": Precision("bf16", None, torch.bfloat16, False),
}


def check_weights_for(model: Any, precision: Precision) -> None:
    """Refuse a pure low-precision step (``"bf16"``) over weights of another dtype.

    Such a step runs without autocast: over float32 weights it would train in float32 while
    the estimate and the plan said bf16. memfit casts weights only through ``PureBF16`` (it
    changes the math, so it runs only when named).

    Raises:
        InvalidInputError: naming the weights, their dtype and the fixes.
    """
    dtype = precision.param_dtype
    if dtype is None or not hasattr(model, "named_parameters"):
        return
    other = [
        (name, param.dtype)
        for name, param in model.named_parameters()
        if param.is_floating_point() and param.dtype != dtype
    ]
    if other:
        name, found = other[0]
        raise InvalidInputError(
            f"precision {precision.name!r} (pure: weights in {dtype}, no autocast) but "
            f"{len(other)} floating parameters are not (e.g. {name!r}, {found}): the step would "
            f"train them in {found}. Cast the model yourself (model.to({dtype})), or let memfit "
            f"cast it with the PureBF16 technique, which changes the math and runs only when "
            f"named (a plan: allow=[..., 'pure_bf16'] / --allow ...,pure_bf16; a list of "
            f"techniques: PureBF16()), or run 'bf16-mixed' (autocast over the weights)"
        )
