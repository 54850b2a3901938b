"""Training precisions by name: what autocast does, what dtype the weights have, loss scaling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memfit.errors import InvalidInputError

__all__ = ["Precision", "PRECISIONS"]


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
